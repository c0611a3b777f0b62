impl Service {
    pub async fn profile(&self, id: i64) -> tabula::Result<Option<Profile>> {
        let __tabula_spec = ::tabula::__private::MemoSpec {
            name: ::std::format!(
                "{}::{}::{}", ::core::module_path!(), ::std::any::type_name:: < Self >
                (), ::core::stringify!(profile)
            ),
            ttl: 300u64,
            tables: &[<Profile as ::tabula::__private::Table>::META],
            stale: 0u64,
        };
        ::tabula::__private::assert_key_arg::<i64>();
        let __tabula_key = ::tabula::__private::memo_key(&__tabula_spec, &(&id,));
        let __tabula_tags: ::std::vec::Vec<::std::string::String> = ::std::vec![];
        ::tabula::__private::memo(
                &__tabula_spec,
                __tabula_key,
                __tabula_tags,
                async move {
                    ::tabula::__private::OkOnly(
                        async move { self.db.read::<Profile>(id).await }.await,
                    )
                },
            )
            .await
            .0
    }
    ///Drops the cached result of [`profile`](Self::profile) for these arguments.
    #[allow(dead_code, clippy::too_many_arguments)]
    pub async fn profile_invalidate(&self, id: i64) {
        let _ = self;
        let _ = &id;
        let __tabula_spec = ::tabula::__private::MemoSpec {
            name: ::std::format!(
                "{}::{}::{}", ::core::module_path!(), ::std::any::type_name:: < Self >
                (), ::core::stringify!(profile)
            ),
            ttl: 300u64,
            tables: &[<Profile as ::tabula::__private::Table>::META],
            stale: 0u64,
        };
        ::tabula::__private::assert_key_arg::<i64>();
        let __tabula_key = ::tabula::__private::memo_key(&__tabula_spec, &(&id,));
        let __tabula_tags: ::std::vec::Vec<::std::string::String> = ::std::vec![];
        ::tabula::__private::memo_invalidate(&__tabula_spec, __tabula_key, __tabula_tags)
            .await
    }
    ///Drops every cached result of `profile`.
    #[allow(dead_code)]
    pub async fn profile_clear(&self) {
        let _ = self;
        let __tabula_spec = ::tabula::__private::MemoSpec {
            name: ::std::format!(
                "{}::{}::{}", ::core::module_path!(), ::std::any::type_name:: < Self >
                (), ::core::stringify!(profile)
            ),
            ttl: 300u64,
            tables: &[<Profile as ::tabula::__private::Table>::META],
            stale: 0u64,
        };
        ::tabula::__private::memo_clear(&__tabula_spec).await
    }
}
async fn double(conn: &Conn, n: i64) -> i64 {
    let __tabula_spec = ::tabula::__private::MemoSpec {
        name: ::std::string::String::from("double"),
        ttl: 5u64,
        tables: &[],
        stale: 0u64,
    };
    ::tabula::__private::assert_key_arg::<i64>();
    let __tabula_key = ::tabula::__private::memo_key(&__tabula_spec, &(&n,));
    let __tabula_tags: ::std::vec::Vec<::std::string::String> = ::std::vec![];
    ::tabula::__private::memo(
            &__tabula_spec,
            __tabula_key,
            __tabula_tags,
            async move {
                ::tabula::__private::Plain(
                    async move {
                        let _ = conn;
                        n * 2
                    }
                        .await,
                )
            },
        )
        .await
        .0
}
///Drops the cached result of [`double`](Self::double) for these arguments.
#[allow(dead_code, clippy::too_many_arguments)]
async fn double_invalidate(conn: &Conn, n: i64) {
    let _ = &conn;
    let _ = &n;
    let __tabula_spec = ::tabula::__private::MemoSpec {
        name: ::std::string::String::from("double"),
        ttl: 5u64,
        tables: &[],
        stale: 0u64,
    };
    ::tabula::__private::assert_key_arg::<i64>();
    let __tabula_key = ::tabula::__private::memo_key(&__tabula_spec, &(&n,));
    let __tabula_tags: ::std::vec::Vec<::std::string::String> = ::std::vec![];
    ::tabula::__private::memo_invalidate(&__tabula_spec, __tabula_key, __tabula_tags)
        .await
}
///Drops every cached result of `double`.
#[allow(dead_code)]
async fn double_clear() {
    let __tabula_spec = ::tabula::__private::MemoSpec {
        name: ::std::string::String::from("double"),
        ttl: 5u64,
        tables: &[],
        stale: 0u64,
    };
    ::tabula::__private::memo_clear(&__tabula_spec).await
}
