//! TLS on real servers: a PostgreSQL with `ssl=on` and a TLS-only Redis, both with
//! certificates for `localhost` from a throwaway CA the test kit makes. Each `sslmode`
//! does what libpq's does: what it encrypts, what it checks, what it refuses.

use tabula::testkit::{TlsPostgres, TlsRedis};
use tabula::{CacheConfig, CacheService, Db, DbConfig, Error, SslMode};

/// Whether this connection is encrypted, as the server sees it.
async fn encrypted(db: &Db) -> bool {
    db.with_client(async |c| {
        let row = c
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await?;
        Ok(row.get::<_, bool>(0))
    })
    .await
    .expect("pg_stat_ssl")
}

async fn open(config: DbConfig) -> tabula::Result<Db> {
    Db::connect_with(config.pool_size(1)).await
}

fn refused(result: tabula::Result<Db>, what: &str) -> String {
    match result {
        Ok(_) => panic!("{what}: connected"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn each_sslmode_encrypts_and_checks_what_libpq_would() {
    let pg = TlsPostgres::start().expect("tls postgres");
    let ca = pg.ca_file().display().to_string();
    let with_ca = |host: &str, mode: &str| format!("{}&sslrootcert={ca}", pg.url(host, mode));

    let plain = open(DbConfig::new(pg.url("127.0.0.1", "disable")))
        .await
        .expect("disable");
    assert!(!encrypted(&plain).await, "disable encrypted");
    let prefer = open(DbConfig::new(pg.url("127.0.0.1", "prefer")))
        .await
        .expect("prefer");
    assert!(
        encrypted(&prefer).await,
        "prefer did not use the TLS the server offers"
    );
    // `require` checks nothing without a root certificate: a wrong name and an
    // unknown CA pass, the connection is encrypted all the same.
    let require = open(DbConfig::new(pg.url("127.0.0.1", "require")))
        .await
        .expect("require");
    assert!(encrypted(&require).await);

    // verify-full: the chain and the name.
    let full = open(DbConfig::new(with_ca("localhost", "verify-full")))
        .await
        .expect("verify-full");
    assert!(encrypted(&full).await);
    let wrong_name = refused(
        open(DbConfig::new(with_ca("127.0.0.1", "verify-full"))).await,
        "verify-full with a host name the certificate does not carry",
    );
    assert!(wrong_name.contains("certificate"), "{wrong_name}");
    let other = pg.other_ca_file().display().to_string();
    let unknown_ca = refused(
        open(DbConfig::new(pg.url("localhost", "verify-full")).ssl_root_cert(&other)).await,
        "verify-full against an unrelated CA",
    );
    assert!(unknown_ca.contains("certificate"), "{unknown_ca}");

    // verify-ca: the chain only.
    let ca_only = open(DbConfig::new(with_ca("127.0.0.1", "verify-ca")))
        .await
        .expect("verify-ca");
    assert!(encrypted(&ca_only).await);
    refused(
        open(DbConfig::new(pg.url("127.0.0.1", "verify-ca")).ssl_root_cert(&other)).await,
        "verify-ca against an unrelated CA",
    );
    // As libpq: `require` with a root certificate checks the chain.
    refused(
        open(DbConfig::new(pg.url("127.0.0.1", "require")).ssl_root_cert(&other)).await,
        "require with an unrelated root certificate",
    );

    // The same settings in a key=value connection string, and from DbConfig.
    let port = pg.url("x", "disable");
    let port = port
        .split(':')
        .nth(2)
        .and_then(|p| p.split('/').next())
        .expect("port");
    let words = format!(
        "host=localhost port={port} user=postgres dbname=postgres sslmode=verify-full sslrootcert={ca}"
    );
    assert!(encrypted(&open(DbConfig::new(words)).await.expect("key=value")).await);
    let built = DbConfig::new(pg.url("localhost", "disable"))
        .ssl_mode(SslMode::VerifyFull)
        .ssl_root_cert(pg.ca_file());
    assert!(encrypted(&open(built).await.expect("builder")).await);
}

#[tokio::test]
async fn words_libpq_would_not_take_are_refused_by_name() {
    for (url, word) in [
        ("postgres://u@h/db?sslmode=allow", "allow"),
        ("postgres://u@h/db?sslmode=verify_full", "verify_full"),
        ("host=h user=u sslmode=sometimes", "sometimes"),
    ] {
        let err = Db::connect_with(DbConfig::new(url)).await.expect_err(url);
        assert!(matches!(err, Error::Config(_)), "{err:?}");
        assert!(err.to_string().contains(word), "{err}");
    }
    let missing = Db::connect_with(DbConfig::new(
        "postgres://u@127.0.0.1:1/db?sslmode=verify-full&sslrootcert=/no/such/file",
    ))
    .await
    .expect_err("missing root file");
    assert!(missing.to_string().contains("/no/such/file"), "{missing}");
}

#[tokio::test]
async fn the_cache_speaks_tls_to_redis() {
    let redis = TlsRedis::start().expect("tls redis");
    // A generous deadline: a TLS handshake on a loaded machine.
    let config = || CacheConfig::default().deadline(std::time::Duration::from_secs(5));
    let cache =
        CacheService::redis(&redis.url(), config().tls_root_cert(redis.ca_file())).expect("cache");
    cache.set("k", &"over tls", Some(60)).await.expect("set");
    assert_eq!(
        cache.get::<String>("k").await.expect("get").as_deref(),
        Some("over tls")
    );
    // The near tier too (RESP3 over TLS).
    let near = CacheService::redis(
        &redis.url(),
        config().tls_root_cert(redis.ca_file()).near(1 << 20),
    )
    .expect("near");
    assert_eq!(
        near.get::<String>("k").await.expect("get").as_deref(),
        Some("over tls")
    );
    // An unknown CA (the platform's roots do not know the test CA) is refused.
    let untrusted = CacheService::redis(&redis.url(), config()).expect("cache");
    let err = untrusted
        .get::<String>("k")
        .await
        .expect_err("an unknown CA");
    assert!(!err.to_string().contains("timed out"), "{err}");
}

/// What libpq would refuse or read as `require` is never quietly `prefer`: an `@` in
/// the query, a spaced, quoted or escaped `sslmode`.
#[tokio::test]
async fn an_sslmode_is_never_quietly_downgraded() {
    // The test kit's own server has no TLS: `require` must fail there.
    let plain = tabula::testkit::postgres_url().expect("postgres");
    let with = |query: &str| format!("{plain}?{query}");
    refused(
        open(DbConfig::new(with(
            "application_name=api@host-1&sslmode=require",
        )))
        .await,
        "require with an `@` in the query, against a server without TLS",
    );
    for written in [
        with("ssl%6Dode=require"),
        "host=127.0.0.1 user=postgres sslmode = require".to_owned(),
        "host=127.0.0.1 user=postgres sslmode='require'".to_owned(),
    ] {
        let err = refused(open(DbConfig::new(written.clone())).await, &written);
        assert!(err.contains("sslmode"), "{written}: {err}");
    }
    // A value that is not a mode is named once.
    let err = refused(
        open(DbConfig::new(with("sslmode=sometimes"))).await,
        "bad word",
    );
    assert!(
        !err.contains("configuration error: configuration error"),
        "{err}"
    );
}

/// A Unix socket has no host name and never negotiates TLS: it connects under every
/// mode short of those that demand TLS.
#[tokio::test]
async fn a_unix_socket_connects_with_the_tls_feature_on() {
    let pg = TlsPostgres::start().expect("tls postgres");
    for mode in ["", " sslmode=disable", " sslmode=prefer"] {
        let url = format!("{}{mode}", pg.socket_url());
        let db = open(DbConfig::new(url.clone())).await.expect(&url);
        assert!(!encrypted(&db).await);
    }
    refused(
        open(DbConfig::new(format!(
            "{} sslmode=require",
            pg.socket_url()
        )))
        .await,
        "require over a socket",
    );
}
