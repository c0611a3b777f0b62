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
