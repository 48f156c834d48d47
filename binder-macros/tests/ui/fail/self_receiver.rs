use event_binder::handler;

pub struct Billing;

impl Billing {
    #[handler(destination = "orders")]
    async fn bill(&self, _event: u64) -> Result<(), std::io::Error> {
        Ok(())
    }
}

fn main() {}
