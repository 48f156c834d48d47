use event_binder::handler;

#[handler(destination = "orders", retry = "kafka")]
async fn unknown_choice(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders", retry = true)]
async fn not_a_string(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders", retry)]
async fn no_value(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
