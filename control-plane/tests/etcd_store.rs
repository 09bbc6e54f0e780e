//! The store conformance suite against a real etcd (one fresh server per check), plus what only etcd has:
//! namespaces, compaction, and outages.

#[path = "support/etcd.rs"]
mod etcd;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use strata_control_plane::store::{EtcdConfig, EtcdStore, EtcdTls, Store, StoreError};

use etcd::Etcd;

async fn store_on(etcd: &Etcd, namespace: &str) -> Arc<dyn Store> {
    let mut config = EtcdConfig::from_url(&etcd.url()).expect("a valid URL");
    config.namespace = namespace.to_string();
    Arc::new(EtcdStore::connect(config).await.expect("connect"))
}

// One fresh etcd per check.
strata_control_plane::store_conformance_tests!(async {
    let etcd = Etcd::start();
    let store = store_on(&etcd, "").await;
    (etcd, store)
});

#[test]
fn store_urls_parse_with_clear_errors() {
    let config = EtcdConfig::from_url("etcd://10.0.0.1:2379,10.0.0.2:2379/prod").expect("valid");
    assert_eq!(config.endpoints, ["10.0.0.1:2379", "10.0.0.2:2379"]);
    assert_eq!(config.namespace, "/prod");
    for (bad, says) in [
        ("http://x:1", "is not an etcd URL"),
        ("etcd://", "names no etcd endpoint"),
        ("etcd://host", "is not HOST:PORT"),
        ("etcd://host:99999", "is not HOST:PORT"),
    ] {
        let error = EtcdConfig::from_url(bad).expect_err(bad).to_string();
        assert!(error.contains(says), "{bad}: {error}");
    }
    assert_eq!(
        EtcdConfig::from_url("etcd://host:99999").map(|c| c.endpoints),
        Err(strata_control_plane::store::EtcdUrlError::Endpoint {
            endpoint: "host:99999".into(),
            url: "etcd://host:99999".into()
        })
    );
}

/// Two namespaces on one etcd never see each other's keys, in reads or in watches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_are_isolated() {
    let etcd = Etcd::start();
    let (a, b) = (store_on(&etcd, "/a").await, store_on(&etcd, "/b").await);
    let mut watch_b = b.watch("/", 0).await.expect("watch");
    a.put("/k", b"from a".to_vec(), None).await.expect("put");
    b.put("/k", b"from b".to_vec(), None).await.expect("put");
    assert_eq!(
        a.get("/k").await.expect("get").map(|kv| kv.value),
        Some(b"from a".to_vec())
    );
    let listed = b.range("/").await.expect("range");
    assert_eq!(listed.kvs.len(), 1);
    assert_eq!(
        listed.kvs[0].key, "/k",
        "keys come back without the namespace"
    );
    let batch = tokio::time::timeout(Duration::from_secs(5), watch_b.next())
        .await
        .expect("a batch")
        .expect("an item")
        .expect("no error");
    assert_eq!(batch.events.len(), 1);
    assert_eq!(batch.events[0].key(), "/k");
    match &batch.events[0] {
        strata_control_plane::store::Event::Put(kv) => assert_eq!(kv.value, b"from b"),
        other => panic!("expected b's put, got {other:?}"),
    }
    assert_eq!(a.delete_prefix("/").await.expect("delete_prefix"), 1);
    assert!(
        b.get("/k").await.expect("get").is_some(),
        "a's delete_prefix spared b"
    );
}

/// A watch from a revision etcd compacted away gets `Compacted`, and the caller can re-list and go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_compacted_revision_gets_compacted() {
    let etcd = Etcd::start();
    let store = store_on(&etcd, "").await;
    let first = store.put("/c", b"1".to_vec(), None).await.expect("put");
    let mut last = first;
    for i in 2..6 {
        last = store
            .put("/c", i.to_string().into_bytes(), None)
            .await
            .expect("put");
    }
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .expect("client");
    client.compact(last, None).await.expect("compact");
    let outcome = match store.watch("/", first).await {
        Err(e) => Some(e),
        Ok(mut stream) => tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("an answer")
            .and_then(Result::err),
    };
    match outcome {
        Some(StoreError::Compacted {
            requested,
            compacted,
        }) => {
            assert_eq!(requested, first);
            assert!(compacted >= first, "compacted through {compacted}");
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    let listed = store.range("/").await.expect("range");
    let mut stream = store
        .watch("/", listed.revision + 1)
        .await
        .expect("watch from the list");
    let next = store.put("/c", b"after".to_vec(), None).await.expect("put");
    let batch = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("a batch")
        .expect("an item")
        .expect("no error");
    assert_eq!(batch.revision, next);
}

/// With etcd down, requests fail fast as `Unavailable` (never hang) and open watches end with
/// `Unavailable`; after etcd returns, the same store handle works again and nothing was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_unavailable_then_the_store_recovers() {
    let mut etcd = Etcd::start();
    let mut config = EtcdConfig::from_url(&etcd.url()).expect("a valid URL");
    config.request_timeout = Duration::from_secs(2);
    let store = EtcdStore::connect(config).await.expect("connect");
    store.put("/kept", b"v".to_vec(), None).await.expect("put");
    let mut watch = store.watch("/", 0).await.expect("watch");
    etcd.stop();

    let ended = tokio::time::timeout(Duration::from_secs(10), watch.next()).await;
    match ended {
        Ok(Some(Err(StoreError::Unavailable(_)))) => {}
        other => panic!("expected the watch to end with Unavailable, got {other:?}"),
    }
    let started = std::time::Instant::now();
    let failed = store.put("/lost", b"v".to_vec(), None).await;
    assert!(
        matches!(failed, Err(StoreError::Unavailable(_))),
        "{failed:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failed after {:?}",
        started.elapsed()
    );

    etcd.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let kept = loop {
        match store.get("/kept").await {
            Ok(kv) => break kv,
            Err(e) if std::time::Instant::now() > deadline => panic!("etcd did not come back: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    assert_eq!(kept.map(|kv| kv.value), Some(b"v".to_vec()));
    store
        .put("/after", b"v".to_vec(), None)
        .await
        .expect("a put after the outage");
}

/// etcd serving TLS with client-certificate authentication: the store connects with the CA and a client
/// certificate; without the certificate, or without TLS, etcd refuses and the store says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    let (etcd, files) = Etcd::start_tls();
    let read = |p: &std::path::Path| std::fs::read(p).expect("PEM file");
    let config = |tls: Option<EtcdTls>| {
        let mut config = EtcdConfig::from_url(&etcd.url()).expect("a valid URL");
        config.tls = tls;
        config.request_timeout = Duration::from_secs(2);
        config
    };
    let full = EtcdTls {
        ca_pem: Some(read(&files.ca)),
        identity: Some((read(&files.client_cert), read(&files.client_key))),
        domain: None,
    };
    let store = EtcdStore::connect(config(Some(full)))
        .await
        .expect("connect");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match store.put("/tls", b"secret".to_vec(), None).await {
            Ok(_) => break,
            Err(e) if std::time::Instant::now() > deadline => panic!("no TLS put within 15 s: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let kv = store.get("/tls").await.expect("get").expect("the key");
    assert_eq!(kv.value, b"secret");

    let no_certificate = EtcdTls {
        ca_pem: Some(read(&files.ca)),
        identity: None,
        domain: None,
    };
    let anonymous = EtcdStore::connect(config(Some(no_certificate)))
        .await
        .expect("connect");
    let refused = anonymous.get("/tls").await;
    assert!(
        refused.is_err(),
        "etcd served a client without a certificate: {refused:?}"
    );
    let plain = EtcdStore::connect(config(None)).await.expect("connect");
    let refused = plain.get("/tls").await;
    assert!(refused.is_err(), "etcd served plain text: {refused:?}");
}
