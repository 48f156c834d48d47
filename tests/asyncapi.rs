//! The AsyncAPI document of an app (feature `asyncapi`): what it says about each handler,
//! and that the official AsyncAPI parser (`@asyncapi/parser`, installed by
//! `scripts/asyncapi.sh`) finds it valid, as JSON and as YAML, and finds a broken copy
//! invalid.
#![cfg(feature = "asyncapi")]

use event_binder::asyncapi::{Document, Info};
use event_binder::memory::MemoryChannel;
use event_binder::{handler, App, Events, Raw};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

/// How an order is shipped: a plain enum.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
enum Shipping {
    Standard,
    Express,
}

/// Where it goes: a nested struct.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
struct Address {
    street: String,
    city: String,
    postcode: Option<String>,
}

/// An order's discount: an enum with data.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Discount {
    Percent { percent: u8 },
    Voucher { code: String },
}

/// A placed order.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
struct OrderPlaced {
    order_id: u64,
    total_cents: u64,
    shipping: Shipping,
    address: Address,
    discount: Option<Discount>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema)]
struct InvoiceIssued {
    order_id: u64,
    number: String,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema)]
struct ReturnRequested {
    order_id: u64,
    lines: Vec<u32>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema)]
struct RefundIssued {
    order_id: u64,
    line: u32,
}

/// An event type without a JSON Schema: it does not derive `JsonSchema`.
#[derive(Deserialize)]
struct AuditEntry {
    #[allow(dead_code)]
    text: String,
}

type Failure = std::io::Error;

/// A processor on `orders`, publishing to `invoices`.
#[handler(destination = "orders", group = "billing", output = "invoices")]
async fn bill(order: OrderPlaced) -> Result<InvoiceIssued, Failure> {
    Ok(InvoiceIssued {
        order_id: order.order_id,
        number: format!("INV-{}", order.order_id),
    })
}

/// A second handler on `orders`: it shares the channel and the message.
#[handler(destination = "orders", group = "shipping")]
async fn ship(_order: OrderPlaced) -> Result<(), Failure> {
    Ok(())
}

/// A batch handler on `orders`: its event type is the `Vec`'s element.
#[handler(destination = "orders", group = "stock", batch = 10)]
async fn reserve(_orders: Vec<OrderPlaced>) -> Result<(), Failure> {
    Ok(())
}

/// An anonymous subscription to `orders` taking raw bytes.
#[handler(destination = "orders")]
async fn archive(_payload: Raw) -> Result<(), Failure> {
    Ok(())
}

#[handler(destination = "audit", group = "audit")]
async fn audit(_entry: AuditEntry) -> Result<(), Failure> {
    Ok(())
}

/// A processor publishing several events at once: each is a `RefundIssued`.
#[handler(destination = "returns", group = "refunds", output = "refunds")]
async fn refund(request: ReturnRequested) -> Result<Events<RefundIssued>, Failure> {
    let order_id = request.order_id;
    Ok(Events(
        request
            .lines
            .into_iter()
            .map(|line| RefundIssued { order_id, line })
            .collect(),
    ))
}

fn document() -> Document {
    let info = Info::new("shop", "1.0.0")
        .description("Bills, ships and refunds orders.")
        .server(
            "production",
            "amqps://shop:s3cret@rabbit.example.com:5671/shop?token=hunter2",
        )
        .unwrap()
        .server("streaming", "kafka://k1:9092,k2:9092")
        .unwrap();
    App::new(MemoryChannel::new())
        .handler(bill)
        .handler(ship)
        .batch_handler(reserve)
        .handler(archive)
        .handler(audit)
        .handler(refund)
        .asyncapi(info)
}

/// The path of `name` in this crate.
fn repo_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

/// Runs the AsyncAPI parser on `text` (a file named `name`); its verdict and what it printed.
fn validate(name: &str, text: &str) -> (bool, String) {
    let validator = repo_path("scripts/asyncapi/validate.mjs");
    assert!(
        repo_path("scripts/asyncapi/node_modules/@asyncapi/parser").is_dir(),
        "the AsyncAPI parser is not installed: run scripts/asyncapi.sh (scripts/test.sh does)"
    );
    let file = std::env::temp_dir().join(format!(
        "event-binder-asyncapi-{}-{}",
        std::process::id(),
        name
    ));
    std::fs::write(&file, text).unwrap();
    let output = Command::new("node")
        .arg(&validator)
        .arg(&file)
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run node (Node.js 18 or later is needed, see scripts/asyncapi.sh): {error}"
            )
        });
    std::fs::remove_file(&file).unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), printed)
}

#[test]
fn the_parser_finds_the_json_document_valid() {
    let (valid, printed) = validate("valid.json", &document().to_json());
    assert!(
        valid,
        "the AsyncAPI parser refused the document:\n{printed}"
    );
}

#[test]
fn the_parser_finds_the_yaml_document_valid() {
    let yaml = document().to_yaml().unwrap();
    assert!(yaml.starts_with("asyncapi: 3.0.0\n"), "{yaml}");
    let (valid, printed) = validate("valid.yaml", &yaml);
    assert!(
        valid,
        "the AsyncAPI parser refused the document:\n{printed}"
    );
}

/// So that the check cannot pass by checking nothing.
#[test]
fn the_parser_finds_broken_documents_invalid() {
    let mut unknown_channel = document().into_value();
    unknown_channel["operations"]["asyncapi.ship"]["channel"]["$ref"] = "#/channels/nowhere".into();
    let (valid, printed) = validate("unknown-channel.json", &unknown_channel.to_string());
    assert!(
        !valid,
        "a reference to a missing channel passed:\n{printed}"
    );
    assert!(printed.contains("#/channels/nowhere"), "{printed}");

    let mut bad_action = document().into_value();
    bad_action["operations"]["asyncapi.ship"]["action"] = "consume".into();
    let (valid, printed) = validate("bad-action.json", &bad_action.to_string());
    assert!(
        !valid,
        "an operation with action \"consume\" passed:\n{printed}"
    );
    assert!(
        printed.contains("operations/asyncapi.ship/action"),
        "{printed}"
    );
}

#[test]
fn each_destination_is_a_channel_with_its_messages() {
    let doc = document().into_value();
    let channels = doc["channels"].as_object().unwrap();
    let mut ids: Vec<&String> = channels.keys().collect();
    ids.sort();
    assert_eq!(ids, ["audit", "invoices", "orders", "refunds", "returns"]);
    // Four handlers read `orders`; its events are `OrderPlaced`, or raw bytes for one.
    let orders = &channels["orders"];
    assert_eq!(orders["address"], "orders");
    let messages: Vec<&String> = orders["messages"].as_object().unwrap().keys().collect();
    assert_eq!(messages, ["OrderPlaced", "Raw"]);
    assert_eq!(
        doc["components"]["messages"]["Raw"]["contentType"],
        "application/octet-stream"
    );
}

#[test]
fn the_event_schema_has_the_structs_fields() {
    let doc = document().into_value();
    let message = &doc["components"]["messages"]["OrderPlaced"];
    assert_eq!(message["contentType"], "application/json");
    assert_eq!(
        message["payload"]["$ref"],
        "#/components/schemas/OrderPlaced"
    );
    let schemas = &doc["components"]["schemas"];
    let order = &schemas["OrderPlaced"];
    assert_eq!(order["type"], "object");
    assert_eq!(order["description"], "A placed order.");
    let properties = order["properties"].as_object().unwrap();
    let mut names: Vec<&String> = properties.keys().collect();
    names.sort();
    assert_eq!(
        names,
        ["address", "discount", "order_id", "shipping", "total_cents"]
    );
    assert_eq!(properties["order_id"]["type"], "integer");
    assert_eq!(
        properties["address"]["$ref"],
        "#/components/schemas/Address"
    );
    assert_eq!(
        properties["shipping"]["$ref"],
        "#/components/schemas/Shipping"
    );
    // An `Option` field is not required.
    let required = order["required"].as_array().unwrap();
    assert!(!required.contains(&json!("discount")), "{order}");
    assert!(required.contains(&json!("address")), "{order}");
    assert_eq!(schemas["Shipping"]["enum"], json!(["Standard", "Express"]));
    assert_eq!(schemas["Address"]["properties"]["city"]["type"], "string");
    assert!(
        schemas["Discount"]["oneOf"].is_array(),
        "{}",
        schemas["Discount"]
    );
    // Draft 07, as the AsyncAPI Schema Object: no 2020-12 keywords.
    let text = doc.to_string();
    assert!(!text.contains("$defs"), "{text}");
    assert!(!text.contains("\"#/definitions"), "{text}");
}

#[test]
fn each_handler_receives_and_each_processor_sends() {
    let doc = document().into_value();
    let operations = doc["operations"].as_object().unwrap();
    let mut ids: Vec<&String> = operations.keys().collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            "asyncapi.archive",
            "asyncapi.audit",
            "asyncapi.bill",
            "asyncapi.bill.send",
            "asyncapi.refund",
            "asyncapi.refund.send",
            "asyncapi.reserve",
            "asyncapi.ship",
        ]
    );
    let bill = &operations["asyncapi.bill"];
    assert_eq!(bill["action"], "receive");
    assert_eq!(bill["channel"]["$ref"], "#/channels/orders");
    assert_eq!(bill["x-event-binder-group"], "billing");
    // A Kafka server is declared: the group is its consumer group.
    assert_eq!(
        bill["bindings"]["kafka"]["groupId"]["enum"],
        json!(["billing"])
    );
    let send = &operations["asyncapi.bill.send"];
    assert_eq!(send["action"], "send");
    assert_eq!(send["channel"]["$ref"], "#/channels/invoices");
    assert_eq!(
        send["messages"],
        json!([{ "$ref": "#/channels/invoices/messages/InvoiceIssued" }])
    );
    // `Events<RefundIssued>` publishes `RefundIssued` events one by one.
    assert_eq!(
        operations["asyncapi.refund.send"]["messages"][0]["$ref"],
        "#/channels/refunds/messages/RefundIssued"
    );
    assert!(operations["asyncapi.reserve"]["description"]
        .as_str()
        .unwrap()
        .contains("batches of up to 10"));
    assert!(operations["asyncapi.archive"]
        .get("x-event-binder-group")
        .is_none());
}

#[test]
fn a_type_without_a_schema_is_any_json_and_says_so() {
    let doc = document().into_value();
    let message = &doc["components"]["messages"]["AuditEntry"];
    assert_eq!(message["payload"], json!({}));
    let description = message["description"].as_str().unwrap();
    assert!(
        description.contains("asyncapi::AuditEntry"),
        "{description}"
    );
    assert!(description.contains("JsonSchema"), "{description}");
}

#[test]
fn servers_show_their_host_but_no_secret() {
    let doc = document();
    let servers = &doc.as_value()["servers"];
    assert_eq!(
        servers["production"],
        json!({
            "host": "rabbit.example.com:5671",
            "pathname": "/shop",
            "protocol": "amqps",
            "description": servers["production"]["description"],
        })
    );
    assert_eq!(servers["streaming"]["protocol"], "kafka");
    let text = doc.to_json();
    for secret in ["s3cret", "hunter2"] {
        assert!(!text.contains(secret), "{text}");
    }
    assert_eq!(doc.as_value()["info"]["title"], "shop");
}
