// One misspelled attribute in a model that the rest of the file uses: the derive still
// defines the model's impls and companion types, so the typo is the only error.
use tabula::{Db, Table};

#[derive(Table, Debug)]
#[table(name = "notes")]
pub struct Note {
    #[table(primary_key, generated)]
    pub id: i64,
    #[table(uniqe)]
    pub slug: String,
    pub body: String,
}

pub async fn uses(db: &Db) -> tabula::Result<()> {
    let note: Option<Note> = db.read::<Note>(1).await?;
    let _ = note.map(|n| (n.id, n.body));
    let _ = db.query::<Note>().filter(Note::SLUG.eq("x".to_owned())).all().await?;
    let created = db
        .create(NewNote { slug: "a".into(), body: "b".into() })
        .await?;
    let _ = db
        .update::<Note>(created.id, NotePatch { body: Some("c".into()), ..Default::default() })
        .await?;
    let _ = (Note::BODY.name(), <Note as Table>::META.name);
    Ok(())
}

fn main() {}
