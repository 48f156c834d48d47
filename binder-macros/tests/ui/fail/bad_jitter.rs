use event_binder::handler;

#[handler(destination = "orders", jitter = 1.5)]
async fn above_one(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders", jitter = -0.2)]
async fn negative(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders", jitter = 2)]
async fn integer_above_one(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders", jitter = "0.2")]
async fn a_string(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders", jitter = 0.2f32)]
async fn an_f32(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
