//! The storage service: upload, download with caching, a signed
//! URL served over HTTP, and a sorted listing — on the throwaway PostgreSQL the test
//! kit starts when `DATABASE_URL` is not set, with files in a temporary folder.
//!
//! Run it with `cargo run --example storage_service`.

use tabula::storage::{BucketOptions, ListOptions, SortColumn, StorageService, UploadOptions};
use tabula::{CacheConfig, CacheService, Db, DbConfig};

#[tokio::main(flavor = "current_thread")]
async fn main() -> tabula::Result<()> {
    let migrations = tabula::embed_migrations!("migrations").with_builtin();
    let url = match std::env::var("DATABASE_URL") {
        Ok(url) => {
            let db = Db::connect(&url).await?;
            migrations.run(&db).await?;
            url
        }
        Err(_) => tabula::testkit::database(&migrations).await?.1,
    };
    let db = Db::connect_with(
        DbConfig::new(url).cache(CacheService::in_memory(CacheConfig::default())?),
    )
    .await?;
    let root = std::env::temp_dir().join(format!("tabula-example-{}", std::process::id()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| tabula::Error::Config(e.to_string()))?;
    let base = format!(
        "http://{}",
        listener
            .local_addr()
            .map_err(|e| tabula::Error::Config(e.to_string()))?
    );
    // In production the key comes from configuration, never from the source.
    let key = format!(
        "example-key-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    );
    let storage = StorageService::local(db, &root, key.as_bytes(), &base)?;
    tokio::spawn(
        axum::serve(listener, tabula::storage::http::router(storage.clone())).into_future(),
    );
    storage
        .create_bucket(
            "avatars",
            BucketOptions {
                public: true,
                ..Default::default()
            },
        )
        .await?;
    storage
        .create_bucket("documents", BucketOptions::default())
        .await?;

    // Upload file
    let public_url = storage
        .upload_file(
            "avatars",
            "user123/avatar.jpg",
            b"\xFF\xD8\xFF not really a jpeg".to_vec(),
            UploadOptions {
                content_type: "image/jpeg".into(),
                cache_control: "3600".into(),
                ..Default::default()
            },
        )
        .await?;
    println!("uploaded   {public_url}");

    // Download with caching
    let file = storage
        .download_file("avatars", "user123/avatar.jpg")
        .await?;
    println!(
        "downloaded {} bytes (cached for the next download)",
        file.len()
    );

    // Generate signed URL
    storage
        .upload_file(
            "documents",
            "private/doc.pdf",
            b"%PDF-1.7".to_vec(),
            UploadOptions::default(),
        )
        .await?;
    let signed_url = storage
        .create_signed_url("documents", "private/doc.pdf", 3600)
        .await?;
    println!("signed     {signed_url}");

    // List files
    for name in ["user123/a.txt", "user123/b.txt"] {
        storage
            .upload_file(
                "documents",
                name,
                name.as_bytes().to_vec(),
                UploadOptions::default(),
            )
            .await?;
    }
    let files = storage
        .list_files(
            "documents",
            "user123",
            ListOptions {
                limit: 20,
                sort_by: SortColumn::CreatedAt,
                descending: true,
                ..Default::default()
            },
        )
        .await?;
    println!(
        "listed     {:?}",
        files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>()
    );
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
