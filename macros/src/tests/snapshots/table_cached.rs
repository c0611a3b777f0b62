///A row to insert into `profiles`: every column of [`Profile`] but the generated ones.
#[derive(Debug, Clone)]
pub struct NewProfile {
    ///Column `username`.
    pub username: String,
    ///Column `avatar_url`.
    pub avatar_url: Option<String>,
    ///Column `settings`.
    pub settings: Option<Settings>,
}
///A partial update of [`Profile`]: set fields are written, `None` fields are left unchanged.
#[derive(Debug, Clone, Default)]
pub struct ProfilePatch {
    ///Column `username`: `None` leaves it unchanged.
    pub username: ::tabula::__private::Option<String>,
    ///Column `avatar_url`: `None` leaves it, `Some(None)` sets NULL.
    pub avatar_url: ::tabula::__private::Option<Option<String>>,
    ///Column `settings`: `None` leaves it, `Some(None)` sets NULL.
    pub settings: ::tabula::__private::Option<Option<Settings>>,
}
#[automatically_derived]
#[allow(dead_code)]
impl ProfilePatch {
    ///Sets column `username`.
    #[must_use]
    pub fn username(mut self, value: impl ::core::convert::Into<String>) -> Self {
        self.username = ::tabula::__private::Option::Some(value.into());
        self
    }
    ///Sets column `avatar_url`.
    #[must_use]
    pub fn avatar_url(
        mut self,
        value: impl ::core::convert::Into<Option<String>>,
    ) -> Self {
        self.avatar_url = ::tabula::__private::Option::Some(value.into());
        self
    }
    ///Sets column `settings`.
    #[must_use]
    pub fn settings(
        mut self,
        value: impl ::core::convert::Into<Option<Settings>>,
    ) -> Self {
        self.settings = ::tabula::__private::Option::Some(value.into());
        self
    }
}
#[automatically_derived]
#[allow(dead_code)]
impl Profile {
    ///Column `id` of `profiles`.
    pub const ID: ::tabula::__private::Column<Profile, Uuid> = ::tabula::__private::Column::new(
        0usize,
        "id",
    );
    ///Column `username` of `profiles`.
    pub const USERNAME: ::tabula::__private::Column<Profile, String> = ::tabula::__private::Column::new(
        1usize,
        "username",
    );
    ///Column `avatar_url` of `profiles`.
    pub const AVATAR_URL: ::tabula::__private::Column<Profile, Option<String>> = ::tabula::__private::Column::new(
        2usize,
        "avatar_url",
    );
    ///Column `settings` of `profiles`.
    pub const SETTINGS: ::tabula::__private::Column<Profile, Option<Settings>> = ::tabula::__private::Column::new(
        3usize,
        "settings",
    );
}
#[doc(hidden)]
const _: () = {
    #[automatically_derived]
    impl ::tabula::__private::Table for Profile {
        type Key = Uuid;
        type New = NewProfile;
        type Patch = ProfilePatch;
        const META: &'static ::tabula::__private::TableMeta = &::tabula::__private::TableMeta {
            schema: ::tabula::__private::Option::None,
            name: "profiles",
            columns: &[
                ::tabula::__private::ColumnMeta {
                    name: "id",
                    field: "id",
                    sql_type: <Uuid as ::tabula::__private::ColumnType>::SQL_TYPE,
                    primary_key: true,
                    generated: true,
                    nullable: <Uuid as ::tabula::__private::ColumnType>::NULLABLE,
                    json: false,
                    unique: false,
                },
                ::tabula::__private::ColumnMeta {
                    name: "username",
                    field: "username",
                    sql_type: <String as ::tabula::__private::ColumnType>::SQL_TYPE,
                    primary_key: false,
                    generated: false,
                    nullable: <String as ::tabula::__private::ColumnType>::NULLABLE,
                    json: false,
                    unique: false,
                },
                ::tabula::__private::ColumnMeta {
                    name: "avatar_url",
                    field: "avatar_url",
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
                    name: "settings",
                    field: "settings",
                    sql_type: "jsonb",
                    primary_key: false,
                    generated: false,
                    nullable: true,
                    json: true,
                    unique: false,
                },
            ],
            primary_key: 0usize,
            soft_delete: ::tabula::__private::Option::None,
            version: ::tabula::__private::Option::None,
            cache_ttl: ::tabula::__private::Option::Some(60u64),
            cache_near: true,
            shape: ::tabula::__private::row_shape(12588193035827523249u64),
        };
        fn from_row_at(
            __row: &::tabula::__private::Row,
            __at: usize,
        ) -> ::tabula::__private::Result<Self> {
            let _ = <Uuid as ::tabula::__private::ColumnType>::SQL_TYPE;
            let _ = <String as ::tabula::__private::ColumnType>::SQL_TYPE;
            let _ = <Option<String> as ::tabula::__private::ColumnType>::SQL_TYPE;
            ::tabula::__private::Result::Ok(Self {
                id: ::tabula::__private::decode_column::<
                    Self,
                    Uuid,
                >(__row, __at, 0usize)?,
                username: ::tabula::__private::decode_column::<
                    Self,
                    String,
                >(__row, __at, 1usize)?,
                avatar_url: ::tabula::__private::decode_column::<
                    Self,
                    Option<String>,
                >(__row, __at, 2usize)?,
                settings: ::tabula::__private::decode_json_opt_column::<
                    Self,
                    Settings,
                >(__row, __at, 3usize)?,
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
        fn cache_encode(
            &self,
        ) -> ::tabula::__private::Option<::tabula::__private::Vec<u8>> {
            let mut __out = ::tabula::__private::Vec::new();
            <Uuid as ::tabula::__private::CacheCodec>::encode(&self.id, &mut __out);
            <String as ::tabula::__private::CacheCodec>::encode(
                &self.username,
                &mut __out,
            );
            <Option<
                String,
            > as ::tabula::__private::CacheCodec>::encode(&self.avatar_url, &mut __out);
            ::tabula::__private::encode_json_opt(&self.settings, &mut __out)?;
            ::tabula::__private::Option::Some(__out)
        }
        fn cache_decode(__bytes: &[u8]) -> ::tabula::__private::Option<Self> {
            let mut __reader = ::tabula::__private::CodecReader::new(__bytes);
            let __c0 = <Uuid as ::tabula::__private::CacheCodec>::decode(&mut __reader)?;
            let __c1 = <String as ::tabula::__private::CacheCodec>::decode(
                &mut __reader,
            )?;
            let __c2 = <Option<
                String,
            > as ::tabula::__private::CacheCodec>::decode(&mut __reader)?;
            let __c3 = ::tabula::__private::decode_json_opt::<Settings>(&mut __reader)?;
            __reader.finish()?;
            ::tabula::__private::Option::Some(Self {
                id: __c0,
                username: __c1,
                avatar_url: __c2,
                settings: __c3,
                scratch: ::tabula::__private::Default::default(),
            })
        }
        fn cache_column_holds(
            &self,
            __index: usize,
            __value: &dyn ::tabula::__private::Any,
        ) -> bool {
            match __index {
                0usize => {
                    match __value.downcast_ref::<Uuid>() {
                        ::tabula::__private::Option::Some(__value) => {
                            ::tabula::__private::same_encoding(
                                __value,
                                &self.id,
                                <Uuid as ::tabula::__private::CacheCodec>::encode,
                            )
                        }
                        ::tabula::__private::Option::None => false,
                    }
                }
                1usize => {
                    match __value.downcast_ref::<String>() {
                        ::tabula::__private::Option::Some(__value) => {
                            ::tabula::__private::same_encoding(
                                __value,
                                &self.username,
                                <String as ::tabula::__private::CacheCodec>::encode,
                            )
                        }
                        ::tabula::__private::Option::None => false,
                    }
                }
                2usize => {
                    match __value.downcast_ref::<Option<String>>() {
                        ::tabula::__private::Option::Some(__value) => {
                            ::tabula::__private::same_encoding(
                                __value,
                                &self.avatar_url,
                                <Option<String> as ::tabula::__private::CacheCodec>::encode,
                            )
                        }
                        ::tabula::__private::Option::None => false,
                    }
                }
                3usize => {
                    match __value.downcast_ref::<Option<Settings>>() {
                        ::tabula::__private::Option::Some(__value) => {
                            ::tabula::__private::same_json::<
                                Option<Settings>,
                            >(__value, &self.settings)
                        }
                        ::tabula::__private::Option::None => false,
                    }
                }
                _ => false,
            }
        }
        fn cache_names(&self) -> ::tabula::__private::Vec<::tabula::__private::String> {
            ::tabula::__private::vec![
                ::tabula::__private::row_name:: < Self >
                (::tabula::__private::Table::key(self)),
            ]
        }
    }
    #[automatically_derived]
    impl ::tabula::__private::NewRow for NewProfile {
        type Table = Profile;
        fn params(&self) -> ::tabula::__private::Vec<::tabula::__private::Param<'_>> {
            let _ = <String as ::tabula::__private::ColumnType>::SQL_TYPE;
            let _ = <Option<String> as ::tabula::__private::ColumnType>::SQL_TYPE;
            ::tabula::__private::Vec::from([
                ::tabula::__private::column_param::<String>(&self.username),
                ::tabula::__private::column_param::<Option<String>>(&self.avatar_url),
                ::tabula::__private::json_opt_param(&self.settings)
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
                ::tabula::__private::column_array::<
                    _,
                    String,
                >(__rows, |__r| &__r.username),
                ::tabula::__private::column_array::<
                    _,
                    Option<String>,
                >(__rows, |__r| &__r.avatar_url),
                ::tabula::__private::json_opt_array(__rows, |__r| &__r.settings),
            ])
        }
    }
    #[automatically_derived]
    impl ::tabula::__private::Patch for ProfilePatch {
        type Table = Profile;
        fn assignments(
            &self,
        ) -> ::tabula::__private::Vec<(usize, ::tabula::__private::Param<'_>)> {
            let _ = <String as ::tabula::__private::ColumnType>::SQL_TYPE;
            let _ = <Option<String> as ::tabula::__private::ColumnType>::SQL_TYPE;
            let mut __out: ::tabula::__private::Vec<
                (usize, ::tabula::__private::Param<'_>),
            > = ::tabula::__private::Vec::new();
            if let ::tabula::__private::Option::Some(__value) = &self.username {
                __out
                    .push((
                        1usize,
                        ::tabula::__private::column_param::<String>(__value),
                    ));
            }
            if let ::tabula::__private::Option::Some(__value) = &self.avatar_url {
                __out
                    .push((
                        2usize,
                        ::tabula::__private::column_param::<Option<String>>(__value),
                    ));
            }
            if let ::tabula::__private::Option::Some(__value) = &self.settings {
                __out
                    .push((
                        3usize,
                        ::tabula::__private::json_opt_param(__value)
                            as ::tabula::__private::Param<'_>,
                    ));
            }
            __out
        }
    }
};
