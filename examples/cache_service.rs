//! The cache service: values with a TTL, lists, sets, hashes, and
//! the method-caching decorator — on `REDIS_URL` when it is set, otherwise on a
//! throwaway redis-server the test kit starts (and stops when this program exits).
//!
//! Run it with `cargo run --example cache_service`.

use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Serialize};
use tabula::{CacheConfig, CacheService, cached};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Profile {
    id: String,
    username: String,
}

struct UserService {
    lookups: AtomicU32,
}

impl UserService {
    // A method memoized for 300 seconds.
    #[cached(ttl = 300)]
    async fn user_profile(&self, id: String) -> tabula::Result<Profile> {
        self.lookups.fetch_add(1, Ordering::SeqCst); // the expensive operation
        Ok(Profile {
            username: format!("user-{id}"),
            id,
        })
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> tabula::Result<()> {
    let url = match std::env::var("REDIS_URL") {
        Ok(url) => url,
        Err(_) => {
            println!("REDIS_URL is not set: started a throwaway redis-server");
            tabula::testkit::redis_url()?
        }
    };
    let cache = CacheService::redis(&url, CacheConfig::default().prefix("example"))?;
    cache.install_global();

    // Basic operations
    cache
        .set("key", &serde_json::json!({ "hello": "world" }), Some(300))
        .await?; // TTL 5 minutes
    let value: Option<serde_json::Value> = cache.get("key").await?;
    println!("get      key = {value:?}");
    cache.delete("key").await?;

    // List operations
    cache.list_push("queue", "item1").await?;
    let item: Option<String> = cache.list_pop("queue").await?;
    println!("listPop  queue = {item:?}");

    // Set operations
    cache.set_add("uniqueUsers", &["user1", "user2"]).await?;
    let mut users: Vec<String> = cache.set_members("uniqueUsers").await?;
    users.sort();
    println!("setMembers uniqueUsers = {users:?}");

    // Hash operations
    cache.hash_set("userPrefs", "theme", "dark").await?;
    let theme: Option<String> = cache.hash_get("userPrefs", "theme").await?;
    println!("hashGet  userPrefs.theme = {theme:?}");

    // Method caching decorator
    let service = UserService {
        lookups: AtomicU32::new(0),
    };
    service.user_profile_clear().await; // a fresh start for this demo
    let first = service.user_profile("123".into()).await?;
    let second = service.user_profile("123".into()).await?;
    println!(
        "cached   {} / {}: the expensive lookup ran {} time(s)",
        first.username,
        second.username,
        service.lookups.load(Ordering::SeqCst)
    );
    Ok(())
}
