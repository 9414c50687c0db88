//! A small native app on masq: a shopping list kept in the `shopping` app's
//! namespace. It uses the device's `masq store` when one answers (set
//! `MASQ_TOKEN` to the token from `masq apps add shopping`), and otherwise
//! runs in peer mode with its own embedded store.
//!
//! ```sh
//! cargo run --release --example native_app -- add milk 2
//! cargo run --release --example native_app -- list
//! cargo run --release --example native_app -- watch      # prints changes, local and remote
//! ```
#![allow(clippy::unwrap_used)]

use masq::client::Mode;
use masq::Client;
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let client = Client::connect("shopping").await?;
    eprintln!(
        "connected in {} mode",
        match client.mode() {
            Mode::Store => "store",
            Mode::Peer => "peer",
        }
    );
    match args.first().map(String::as_str) {
        Some("add") if args.len() >= 2 => {
            let qty: i64 = args.get(2).and_then(|q| q.parse().ok()).unwrap_or(1);
            client
                .put("items", &args[1], &json!({ "qty": qty }))
                .await?;
        }
        Some("done") if args.len() == 2 => {
            client.delete("items", &args[1]).await?;
        }
        Some("watch") => {
            let mut events = client.watch("items", "").await?;
            while let Some(ev) = events.next().await {
                println!("{}", serde_json::to_string(&ev)?);
            }
        }
        _ => {
            for (item, v) in client.list("items", "").await? {
                println!("{item}: {}", v["qty"]);
            }
        }
    }
    client.close().await;
    Ok(())
}
