::core::compile_error! {
    "unknown field attribute `uniqe`; expected one of `primary_key`, `generated`, `rename`, `skip`, `json`, `soft_delete`, `unique`, `version`, `belongs_to`\n\nhelp: did you mean `unique`?"
}
///A row to insert into `notes`: every column of [`Note`] but the generated ones.
#[derive(Debug, Clone)]
pub struct NewNote {
    ///Column `id`.
    pub id: i64,
    ///Column `slug`.
    pub slug: String,
}
///A partial update of [`Note`]: set fields are written, `None` fields are left unchanged.
#[derive(Debug, Clone, Default)]
pub struct NotePatch {
    ///Column `slug`: `None` leaves it unchanged.
    pub slug: ::tabula::__private::Option<String>,
}
#[automatically_derived]
#[allow(dead_code)]
impl NotePatch {
    ///Sets column `slug`.
    #[must_use]
    pub fn slug(mut self, value: impl ::core::convert::Into<String>) -> Self {
        self.slug = ::tabula::__private::Option::Some(value.into());
        self
    }
}
#[automatically_derived]
#[allow(dead_code)]
impl Note {
    ///Column `id` of `notes`.
    pub const ID: ::tabula::__private::Column<Note, i64> = ::tabula::__private::Column::new(
        0usize,
        "id",
    );
    ///Column `slug` of `notes`.
    pub const SLUG: ::tabula::__private::Column<Note, String> = ::tabula::__private::Column::new(
        1usize,
        "slug",
    );
}
#[doc(hidden)]
const _: () = {
    #[automatically_derived]
    impl ::tabula::__private::Table for Note {
        type Key = i64;
        type New = NewNote;
        type Patch = NotePatch;
        const META: &'static ::tabula::__private::TableMeta = &::tabula::__private::TableMeta {
            schema: ::tabula::__private::Option::None,
            name: "notes",
            columns: &[],
            primary_key: 0,
            soft_delete: ::tabula::__private::Option::None,
            version: ::tabula::__private::Option::None,
            cache_ttl: ::tabula::__private::Option::None,
            cache_near: true,
            shape: 0,
        };
        fn from_row_at(
            _: &::tabula::__private::Row,
            _: usize,
        ) -> ::tabula::__private::Result<Self> {
            ::core::unreachable!()
        }
        fn key(&self) -> &Self::Key {
            ::core::unreachable!()
        }
        fn statements() -> &'static ::tabula::__private::Statements {
            ::core::unreachable!()
        }
    }
    #[automatically_derived]
    impl ::tabula::__private::NewRow for NewNote {
        type Table = Note;
        fn params(&self) -> ::tabula::__private::Vec<::tabula::__private::Param<'_>> {
            ::core::unreachable!()
        }
        fn column_arrays(
            _: &[Self],
        ) -> ::tabula::__private::Vec<
            ::tabula::__private::Box<::tabula::__private::DynParam<'_>>,
        > {
            ::core::unreachable!()
        }
    }
    #[automatically_derived]
    impl ::tabula::__private::Patch for NotePatch {
        type Table = Note;
        fn assignments(
            &self,
        ) -> ::tabula::__private::Vec<(usize, ::tabula::__private::Param<'_>)> {
            ::core::unreachable!()
        }
    }
};
