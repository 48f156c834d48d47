use event_binder::handler;

#[handler(destination = "orders")]
async unsafe fn bill(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders")]
const fn audit(_event: u64) -> Result<(), ()> {
    Ok(())
}

#[handler(destination = "orders")]
async extern "C" fn ship(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
