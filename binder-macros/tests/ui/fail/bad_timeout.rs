use event_binder::handler;

#[handler(destination = "orders", timeout = 5)]
async fn not_a_string(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders", timeout = "5")]
async fn no_unit(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders", timeout = "5sec")]
async fn unknown_unit(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders", timeout = "0s")]
async fn zero(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders", timeout = "99999999999999999999ms")]
async fn overflow(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders", timeout = "5s", timeout = "10s")]
async fn twice(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
