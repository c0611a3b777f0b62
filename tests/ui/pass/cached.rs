use tabula::{cached, Table};

#[derive(Table, serde::Serialize, serde::Deserialize)]
struct Profile {
    #[table(primary_key)]
    id: i64,
}

struct Service;

impl Service {
    #[cached(ttl = 300, tables(Profile))]
    async fn profile(&self, id: i64) -> tabula::Result<Option<String>> {
        Ok(Some(id.to_string()))
    }

    #[cached(ttl = 5, key = format!("k{n}"), name = "custom")]
    async fn keyed(&self, n: u8, _ignored: &str) -> Vec<u8> {
        vec![n]
    }
}

#[cached(ttl = 1, skip(conn))]
async fn free(conn: std::rc::Rc<()>, n: i64) -> i64 {
    let _ = conn;
    n
}

fn main() {
    let _ = Service.profile(1);
    let _ = Service.profile_invalidate(1);
    let _ = Service.profile_clear();
    let _ = Service.keyed(1, "x");
    let _ = free_invalidate(std::rc::Rc::new(()), 1);
    let _ = free_clear();
}
