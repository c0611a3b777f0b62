//! Every operation's future is `Send`: it can be handed to `tokio::spawn`.

mod common;
use common::*;

#[tokio::test]
async fn futures_can_be_spawned() {
    let db = db().await;
    let p = db.create(new_profile("spawned")).await.expect("create");
    let d = db.clone();
    let read = tokio::spawn(async move { d.read::<Profile>(p.id).await });
    let d = db.clone();
    let all = tokio::spawn(async move {
        d.query::<Profile>()
            .filter(Profile::USERNAME.eq("spawned"))
            .all()
            .await
    });
    let d = db.clone();
    let upd = tokio::spawn(async move {
        d.update::<Profile>(
            p.id,
            ProfilePatch {
                avatar_url: Some(None),
                ..Default::default()
            },
        )
        .await
    });
    assert!(read.await.expect("join").expect("read").is_some());
    assert_eq!(all.await.expect("join").expect("all").len(), 1);
    upd.await.expect("join").expect("update");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyset_pages_and_query_specs_can_be_spawned() {
    let db = db().await;
    for name in ["ann", "bob", "cid"] {
        db.create(new_profile(name)).await.expect("create");
    }
    let d = db.clone();
    let page = tokio::spawn(async move {
        let first = d
            .query::<Profile>()
            .order_by(Profile::USERNAME.asc())
            .page(2, None)
            .await?;
        d.query::<Profile>()
            .order_by(Profile::USERNAME.asc())
            .page(2, first.next.as_ref())
            .await
    });
    let d = db.clone();
    let spec = tokio::spawn(async move {
        let spec = tabula::query::QuerySpec::from_query_string(
            "username=in.(ann,cid)&order=username.asc",
        )?;
        d.query_spec::<Profile>(&spec, &tabula::query::SpecLimits::default())
            .await
    });
    let page = page.await.expect("join").expect("page");
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].username, "cid");
    let spec = spec.await.expect("join").expect("query_spec");
    assert_eq!(spec.rows.len(), 2);
}
