use event_binder::handler;

#[handler(destination = "orders", backoff = 100)]
async fn not_a_string(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders", backoff = "10s")]
async fn no_range(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders", backoff = "100ms..")]
async fn no_longest_wait(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders", backoff = "1.5s..10s")]
async fn bad_number(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders", backoff = "100us..10s")]
async fn unknown_unit(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders", backoff = "100ms .. 10s")]
async fn spaces(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders", backoff = "0ms..0s")]
async fn zero_longest_wait(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders", backoff = "10s..100ms")]
async fn first_longer_than_longest(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders", backoff = "1ms..9999999999999999h")]
async fn overflow(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
