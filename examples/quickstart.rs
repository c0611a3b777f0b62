//! The quickstart: create, read, update, delete, and a
//! query — on `DATABASE_URL` when it is set, otherwise on a throwaway PostgreSQL that
//! the test kit starts (and stops when this program exits).
//!
//! Run it with `cargo run --example quickstart` (or `./tabula quickstart`).

use chrono::{DateTime, Utc};
use tabula::migrate::Migrator;
use tabula::{Db, Table};
use uuid::Uuid;

/// A user's profile (`migrations/0001_seed_models.sql`).
#[derive(Table, Debug, Clone)]
#[table(name = "profiles")]
pub struct Profile {
    #[table(primary_key, generated)]
    pub id: Uuid,
    pub user_id: Uuid,
    pub username: String,
    pub avatar_url: Option<String>,
    #[table(generated)]
    pub status: String,
    #[table(generated)]
    pub created_at: DateTime<Utc>,
    #[table(generated)]
    pub updated_at: DateTime<Utc>,
}

async fn connect(migrations: &Migrator) -> tabula::Result<Db> {
    if std::env::var("DATABASE_URL").is_ok() {
        let db = Db::connect_from_env().await?;
        migrations.run(&db).await?;
        println!("connected to DATABASE_URL");
        Ok(db)
    } else {
        let (db, _url) = tabula::testkit::database(migrations).await?;
        println!("DATABASE_URL is not set: started a throwaway PostgreSQL");
        Ok(db)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> tabula::Result<()> {
    let migrations = tabula::embed_migrations!("migrations").with_builtin();
    let db = connect(&migrations).await?;

    // Create a new profile
    let profile = db
        .create(NewProfile {
            user_id: Uuid::new_v4(),
            username: format!("johndoe-{}", &Uuid::new_v4().simple().to_string()[..6]),
            avatar_url: Some("https://example.com/avatar.jpg".into()),
        })
        .await?;
    println!(
        "created  {} ({}) at {}",
        profile.username, profile.id, profile.created_at
    );

    // Read
    let read: Option<Profile> = db.read(profile.id).await?;
    println!("read     {:?}", read.as_ref().map(|p| &p.username));

    // Update: only the fields that are set
    let updated = db
        .update::<Profile>(
            profile.id,
            ProfilePatch {
                username: Some(format!("janedoe-{}", &profile.id.simple().to_string()[..6])),
                ..Default::default()
            },
        )
        .await?;
    println!("updated  {} -> {}", profile.username, updated.username);

    // Query: select, eq, order, limit
    let users: Vec<(Uuid, String, Option<String>)> = db
        .query::<Profile>()
        .select((Profile::ID, Profile::USERNAME, Profile::AVATAR_URL))
        .filter(Profile::STATUS.eq("active"))
        .order_by(Profile::CREATED_AT.desc())
        .limit(10)
        .all()
        .await?;
    println!(
        "query    {} active profile(s), newest first: {:?}",
        users.len(),
        users.first().map(|u| &u.1)
    );

    // Delete
    db.delete::<Profile>(profile.id).await?;
    let gone: Option<Profile> = db.read(profile.id).await?;
    println!(
        "deleted  {} (read now gives {:?})",
        profile.id,
        gone.map(|p| p.id)
    );
    Ok(())
}
