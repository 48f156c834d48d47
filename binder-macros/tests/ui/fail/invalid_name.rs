use event_binder::handler;

#[handler(destination = "orders.eu")]
async fn bill(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(destination = "orders", group = "")]
async fn audit(_event: u64) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(
    destination = "orders",
    output = "invoices-for-every-order-placed-in-the-european-union"
)]
async fn invoice(_event: u64) -> Result<u64, std::io::Error> {
    Ok(1)
}

fn main() {}
