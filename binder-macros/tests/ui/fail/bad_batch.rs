use event_binder::handler;

#[handler(destination = "orders", batch = 0)]
async fn zero(_orders: Vec<u64>) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders", batch = "100")]
async fn a_string(_orders: Vec<u64>) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders", batch = 100u8)]
async fn not_usize(_orders: Vec<u64>) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders", batch = 99999999999999999999999)]
async fn too_big(_orders: Vec<u64>) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders", batch)]
async fn no_value(_orders: Vec<u64>) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders", batch = 10, batch_wait = 50)]
async fn wait_not_a_string(_orders: Vec<u64>) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders", batch = 10, batch_wait = "50")]
async fn wait_without_unit(_orders: Vec<u64>) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders", batch = 10, concurrency = 4)]
async fn with_concurrency(_orders: Vec<u64>) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders", batch = 10, retry = "broker")]
async fn through_the_broker(_orders: Vec<u64>) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
