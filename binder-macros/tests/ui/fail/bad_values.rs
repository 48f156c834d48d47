use event_binder::handler;

const ORDERS: &str = "orders";

#[handler(destination = ORDERS)]
async fn bill(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders", concurrency = "8")]
async fn audit(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders", concurrency = 0)]
async fn ship(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders", max_attempts = 0)]
async fn notify(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders", max_attempts = 5000000000)]
async fn track(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination)]
async fn log(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
