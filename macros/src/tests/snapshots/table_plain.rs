///A row to insert into `notes`: every column of [`Note`] but the generated ones.
#[derive(Debug, Clone)]
pub struct NewNote {
    ///Column `slug`.
    pub slug: String,
    ///Column `text`.
    pub body: Option<String>,
    ///Column `meta`.
    pub meta: Meta,
}
///A partial update of [`Note`]: set fields are written, `None` fields are left unchanged.
#[derive(Debug, Clone, Default)]
pub struct NotePatch {
    ///Column `slug`: `None` leaves it unchanged.
    pub slug: ::tabula::__private::Option<String>,
    ///Column `text`: `None` leaves it, `Some(None)` sets NULL.
    pub body: ::tabula::__private::Option<Option<String>>,
    ///Column `meta`: `None` leaves it unchanged.
    pub meta: ::tabula::__private::Option<Meta>,
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
    ///Sets column `text`.
    #[must_use]
    pub fn body(mut self, value: impl ::core::convert::Into<Option<String>>) -> Self {
        self.body = ::tabula::__private::Option::Some(value.into());
        self
    }
    ///Sets column `meta`.
    #[must_use]
    pub fn meta(mut self, value: impl ::core::convert::Into<Meta>) -> Self {
        self.meta = ::tabula::__private::Option::Some(value.into());
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
    ///Column `text` of `notes`.
    pub const BODY: ::tabula::__private::Column<Note, Option<String>> = ::tabula::__private::Column::new(
        2usize,
        "text",
    );
    ///Column `meta` of `notes`.
    pub const META: ::tabula::__private::Column<Note, Meta> = ::tabula::__private::Column::new(
        3usize,
        "meta",
    );
    ///Column `deleted_at` of `notes`.
    pub const DELETED_AT: ::tabula::__private::Column<Note, Option<DateTime<Utc>>> = ::tabula::__private::Column::new(
        4usize,
        "deleted_at",
    );
    ///The row whose `slug` is `value` (a unique column), through the row cache when `notes` has one.
    pub async fn by_slug(
        db: &::tabula::__private::Db,
        value: impl ::core::convert::Into<String>,
    ) -> ::tabula::__private::Result<::tabula::__private::Option<Self>> {
        db.find_unique(Self::SLUG, value.into()).await
    }
}
#[doc(hidden)]
const _: () = {
    #[automatically_derived]
    impl ::tabula::__private::Table for Note {
        type Key = i64;
        type New = NewNote;
        type Patch = NotePatch;
        const META: &'static ::tabula::__private::TableMeta = &::tabula::__private::TableMeta {
            schema: ::tabula::__private::Option::Some("app"),
            name: "notes",
            columns: &[
                ::tabula::__private::ColumnMeta {
                    name: "id",
                    field: "id",
                    sql_type: <i64 as ::tabula::__private::ColumnType>::SQL_TYPE,
                    primary_key: true,
                    generated: true,
                    nullable: <i64 as ::tabula::__private::ColumnType>::NULLABLE,
                    json: false,
                    unique: false,
                },
                ::tabula::__private::ColumnMeta {
                    name: "slug",
                    field: "slug",
                    sql_type: <String as ::tabula::__private::ColumnType>::SQL_TYPE,
                    primary_key: false,
                    generated: false,
                    nullable: <String as ::tabula::__private::ColumnType>::NULLABLE,
                    json: false,
                    unique: true,
                },
                ::tabula::__private::ColumnMeta {
                    name: "text",
                    field: "body",
                    sql_type: <Option<
                        String,
                    > as ::tabula::__private::ColumnType>::SQL_TYPE,
                    primary_key: false,
                    generated: false,
                    nullable: <Option<
                        String,
                    > as ::tabula::__private::ColumnType>::NULLABLE,
                    json: false,
                    unique: false,
                },
                ::tabula::__private::ColumnMeta {
                    name: "meta",
                    field: "meta",
                    sql_type: "jsonb",
                    primary_key: false,
                    generated: false,
                    nullable: false,
                    json: true,
                    unique: false,
                },
                ::tabula::__private::ColumnMeta {
                    name: "deleted_at",
                    field: "deleted_at",
                    sql_type: <Option<
                        DateTime<Utc>,
                    > as ::tabula::__private::ColumnType>::SQL_TYPE,
                    primary_key: false,
                    generated: true,
                    nullable: <Option<
                        DateTime<Utc>,
                    > as ::tabula::__private::ColumnType>::NULLABLE,
                    json: false,
                    unique: false,
                },
            ],
            primary_key: 0usize,
            soft_delete: ::tabula::__private::Option::Some(4usize),
            version: ::tabula::__private::Option::None,
            cache_ttl: ::tabula::__private::Option::None,
            cache_near: true,
            shape: ::tabula::__private::row_shape(17244957423811391135u64),
        };
        fn from_row_at(
            __row: &::tabula::__private::Row,
            __at: usize,
        ) -> ::tabula::__private::Result<Self> {
            let _ = <i64 as ::tabula::__private::ColumnType>::SQL_TYPE;
            let _ = <String as ::tabula::__private::ColumnType>::SQL_TYPE;
            let _ = <Option<String> as ::tabula::__private::ColumnType>::SQL_TYPE;
            ::tabula::__private::assert_soft_delete_column::<Option<DateTime<Utc>>>();
            ::tabula::__private::Result::Ok(Self {
                id: ::tabula::__private::decode_column::<
                    Self,
                    i64,
                >(__row, __at, 0usize)?,
                slug: ::tabula::__private::decode_column::<
                    Self,
                    String,
                >(__row, __at, 1usize)?,
                body: ::tabula::__private::decode_column::<
                    Self,
                    Option<String>,
                >(__row, __at, 2usize)?,
                meta: ::tabula::__private::decode_json_column::<
                    Self,
                    Meta,
                >(__row, __at, 3usize)?,
                deleted_at: ::tabula::__private::decode_column::<
                    Self,
                    Option<DateTime<Utc>>,
                >(__row, __at, 4usize)?,
                scratch: ::tabula::__private::Default::default(),
            })
        }
        fn key(&self) -> &Self::Key {
            &self.id
        }
        fn statements() -> &'static ::tabula::__private::Statements {
            static __STATEMENTS: ::tabula::__private::OnceLock<
                ::tabula::__private::Statements,
            > = ::tabula::__private::OnceLock::new();
            __STATEMENTS
                .get_or_init(|| ::tabula::__private::Statements::render(
                    <Self as ::tabula::__private::Table>::META,
                ))
        }
    }
    #[automatically_derived]
    impl ::tabula::__private::NewRow for NewNote {
        type Table = Note;
        fn params(&self) -> ::tabula::__private::Vec<::tabula::__private::Param<'_>> {
            let _ = <String as ::tabula::__private::ColumnType>::SQL_TYPE;
            let _ = <Option<String> as ::tabula::__private::ColumnType>::SQL_TYPE;
            ::tabula::__private::Vec::from([
                ::tabula::__private::column_param::<String>(&self.slug),
                ::tabula::__private::column_param::<Option<String>>(&self.body),
                ::tabula::__private::json_param(&self.meta)
                    as ::tabula::__private::Param<'_>,
            ])
        }
        fn column_arrays(
            __rows: &[Self],
        ) -> ::tabula::__private::Vec<
            ::tabula::__private::Box<::tabula::__private::DynParam<'_>>,
        > {
            let _ = <String as ::tabula::__private::ColumnType>::SQL_TYPE;
            let _ = <Option<String> as ::tabula::__private::ColumnType>::SQL_TYPE;
            ::tabula::__private::Vec::from([
                ::tabula::__private::column_array::<_, String>(__rows, |__r| &__r.slug),
                ::tabula::__private::column_array::<
                    _,
                    Option<String>,
                >(__rows, |__r| &__r.body),
                ::tabula::__private::json_array(__rows, |__r| &__r.meta),
            ])
        }
    }
    #[automatically_derived]
    impl ::tabula::__private::Patch for NotePatch {
        type Table = Note;
        fn assignments(
            &self,
        ) -> ::tabula::__private::Vec<(usize, ::tabula::__private::Param<'_>)> {
            let _ = <String as ::tabula::__private::ColumnType>::SQL_TYPE;
            let _ = <Option<String> as ::tabula::__private::ColumnType>::SQL_TYPE;
            let mut __out: ::tabula::__private::Vec<
                (usize, ::tabula::__private::Param<'_>),
            > = ::tabula::__private::Vec::new();
            if let ::tabula::__private::Option::Some(__value) = &self.slug {
                __out
                    .push((
                        1usize,
                        ::tabula::__private::column_param::<String>(__value),
                    ));
            }
            if let ::tabula::__private::Option::Some(__value) = &self.body {
                __out
                    .push((
                        2usize,
                        ::tabula::__private::column_param::<Option<String>>(__value),
                    ));
            }
            if let ::tabula::__private::Option::Some(__value) = &self.meta {
                __out
                    .push((
                        3usize,
                        ::tabula::__private::json_param(__value)
                            as ::tabula::__private::Param<'_>,
                    ));
            }
            __out
        }
    }
};
