//! [`EtcdStore`]: the [`Store`] on a real etcd v3 cluster (`etcd-client`), for control planes that run on
//! more than one machine or as several replicas.
//!
//! - **Namespace.** Every key is stored under an optional prefix ([`EtcdConfig::namespace`]), so several
//!   Strata clusters (or test runs) can share one etcd. Revisions are etcd's own, shared by the whole etcd.
//! - **Timeouts.** Unary requests give up after [`EtcdConfig::request_timeout`] with
//!   [`StoreError::Unavailable`]; streams (watches, keep-alives, campaigns) rely on HTTP/2 keep-alive pings
//!   to notice a dead etcd. A request that timed out may still have been applied: callers' compare-and-swap
//!   loops re-read before they retry.
//! - **Watches** end with [`StoreError::Unavailable`] when etcd goes away (the connection breaks, or the
//!   member loses its raft leader: watches require a leader) and with [`StoreError::Compacted`] when etcd
//!   has compacted the revision asked for; either way the caller re-lists and watches again.
//! - **Leases.** `keep_alive` keeps one keep-alive stream per lease open while the lease is renewed (closed
//!   after a minute without renewal, or when the lease is found gone).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use etcd_client::{
    Client, ConnectOptions, DeleteOptions, GetOptions, LeaseKeepAliveStream, LeaseKeeper,
    PutOptions, TxnOpResponse, WatchOptions,
};

use super::{
    Compare, CompareOp, CompareTarget, Event, KeyValue, Leadership, LeaseId, Range, Revision,
    Store, StoreError, Txn, TxnOp, TxnResult, WatchBatch, WatchStream,
};

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// `host:port` (or `http(s)://host:port`) of one or more etcd members.
    pub endpoints: Vec<String>,
    /// Prefix put before every key (may be empty), e.g. `/prod` to share an etcd with other users.
    pub namespace: String,
    /// TLS settings; `None` for plain-text etcd.
    pub tls: Option<EtcdTls>,
    /// User name and password, when etcd has authentication enabled.
    pub user: Option<(String, String)>,
    /// How long to wait for a connection to a member.
    pub connect_timeout: Duration,
    /// How long a unary request may take before it fails as unavailable.
    pub request_timeout: Duration,
}

/// TLS material for etcd, PEM-encoded.
#[derive(Debug, Clone, Default)]
pub struct EtcdTls {
    /// The CA that signed etcd's server certificates (default: the system roots are not used, so give one).
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate and key, for etcd's `--client-cert-auth`.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name to check etcd's certificate against, when it differs from the endpoint's host.
    pub domain: Option<String>,
}

/// An `--store etcd://…` URL that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdUrlError {
    /// Not `etcd://`.
    #[error("\"{0}\" is not an etcd URL: use etcd://HOST:PORT[,HOST:PORT…]")]
    Scheme(String),
    /// No endpoint.
    #[error("\"{0}\" names no etcd endpoint: use etcd://HOST:PORT[,HOST:PORT…]")]
    NoEndpoint(String),
    /// An endpoint without a valid port.
    #[error("etcd endpoint \"{endpoint}\" in \"{url}\" is not HOST:PORT")]
    Endpoint {
        /// The endpoint.
        endpoint: String,
        /// The whole URL.
        url: String,
    },
}

impl EtcdConfig {
    /// Parses `etcd://HOST:PORT[,HOST:PORT…][/NAMESPACE]` (the form `--store` takes); timeouts get their
    /// defaults (3 s connect, 5 s per request).
    pub fn from_url(url: &str) -> Result<EtcdConfig, EtcdUrlError> {
        let rest = url
            .strip_prefix("etcd://")
            .ok_or_else(|| EtcdUrlError::Scheme(url.to_string()))?;
        let (hosts, namespace) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/').to_string()),
            None => (rest, String::new()),
        };
        let endpoints: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .collect();
        if endpoints.is_empty() {
            return Err(EtcdUrlError::NoEndpoint(url.to_string()));
        }
        for endpoint in &endpoints {
            let port = endpoint.rsplit_once(':').map(|(_, p)| p);
            if port.is_none_or(|p| p.parse::<u16>().is_err()) {
                return Err(EtcdUrlError::Endpoint {
                    endpoint: endpoint.clone(),
                    url: url.to_string(),
                });
            }
        }
        Ok(EtcdConfig {
            endpoints,
            namespace,
            tls: None,
            user: None,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
        })
    }
}

type Keeper = Arc<tokio::sync::Mutex<Option<(LeaseKeeper, LeaseKeepAliveStream)>>>;

/// A lease's keep-alive stream, and when it was last used.
struct KeeperEntry {
    keeper: Keeper,
    used: Instant,
}

/// A keep-alive stream unused this long is closed (its lease was abandoned, e.g. by an agent that died).
const KEEPER_IDLE: Duration = Duration::from_secs(60);

/// The [`Store`] on etcd. Cheap to share: every request clones one multiplexed connection.
pub struct EtcdStore {
    client: Client,
    namespace: String,
    request_timeout: Duration,
    keepers: Mutex<HashMap<LeaseId, KeeperEntry>>,
    /// When idle keep-alive streams were last swept.
    swept: Mutex<Instant>,
}

/// The largest response accepted from etcd (a range over every node of a large cluster).
const MAX_RESPONSE_BYTES: usize = 256 << 20;

impl EtcdStore {
    /// Connects (lazily: no request is made until the first call, so this succeeds while etcd is down,
    /// unless a user is given, whose token is fetched now).
    pub async fn connect(config: EtcdConfig) -> Result<EtcdStore, StoreError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if let Some((user, password)) = &config.user {
            options = options.with_user(user, password);
        }
        if let Some(tls) = &config.tls {
            let mut t = etcd_client::TlsOptions::new();
            if let Some(ca) = &tls.ca_pem {
                t = t.ca_certificate(etcd_client::Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &tls.identity {
                t = t.identity(etcd_client::Identity::from_pem(cert, key));
            }
            if let Some(domain) = &tls.domain {
                t = t.domain_name(domain);
            }
            options = options.with_tls(t);
        }
        let client = Client::connect(&config.endpoints, Some(options))
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "cannot connect to etcd at {}: {e}",
                    config.endpoints.join(",")
                ))
            })?;
        Ok(EtcdStore {
            client,
            namespace: config.namespace,
            request_timeout: config.request_timeout,
            keepers: Mutex::new(HashMap::new()),
            swept: Mutex::new(Instant::now()),
        })
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.namespace)
    }

    fn check_key(key: &str) -> Result<(), StoreError> {
        if key.is_empty() {
            return Err(StoreError::InvalidArgument("empty key".into()));
        }
        Ok(())
    }

    /// A key as the caller knows it: without the namespace.
    fn local(&self, key: &[u8]) -> Result<String, StoreError> {
        let key = std::str::from_utf8(key)
            .map_err(|_| StoreError::Corrupt(format!("key {key:?} is not UTF-8")))?;
        key.strip_prefix(self.namespace.as_str())
            .map(str::to_string)
            .ok_or_else(|| {
                StoreError::Corrupt(format!("key {key} is outside namespace {}", self.namespace))
            })
    }

    fn kv(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
        Ok(KeyValue {
            key: self.local(kv.key())?,
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            version: kv.version(),
            lease: (kv.lease() != 0).then_some(kv.lease()),
        })
    }

    /// Runs a unary request with the request timeout.
    async fn timed<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        self.timed_lease(what, None, call).await
    }

    /// [`Self::timed`] for a request that names `lease`: etcd's "lease not found" becomes
    /// [`StoreError::LeaseNotFound`].
    async fn timed_lease<T>(
        &self,
        what: &str,
        lease: Option<LeaseId>,
        call: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.request_timeout, call).await {
            Ok(result) => result.map_err(|e| error_about(what, lease, e)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "etcd did not answer {what} within {:?}",
                self.request_timeout
            ))),
        }
    }

    fn keeper(&self, lease: LeaseId) -> Keeper {
        let now = Instant::now();
        let mut keepers = self.keepers.lock();
        let sweep = {
            let mut swept = self.swept.lock();
            now.duration_since(*swept) > KEEPER_IDLE && {
                *swept = now;
                true
            }
        };
        if sweep {
            keepers.retain(|_, e| now.duration_since(e.used) < KEEPER_IDLE);
        }
        let entry = keepers.entry(lease).or_insert_with(|| KeeperEntry {
            keeper: Keeper::default(),
            used: now,
        });
        entry.used = now;
        entry.keeper.clone()
    }

    fn forget_keeper(&self, lease: LeaseId) {
        self.keepers.lock().remove(&lease);
    }

    async fn renew(&self, lease: LeaseId, keeper: &Keeper) -> Result<i64, StoreError> {
        let mut slot = keeper.lock().await;
        let ttl = match slot.as_mut() {
            None => {
                let mut client = self.client.lease_client();
                let opened = self
                    .timed_lease("a lease keep-alive", Some(lease), client.keep_alive(lease))
                    .await?;
                // `keep_alive` read the first answer and refused a lease with TTL 0; read the TTL it
                // granted with a second renewal on the new stream.
                let (keeper, stream) = slot.insert(opened);
                renew_on(keeper, stream, self.request_timeout).await
            }
            Some((keeper, stream)) => renew_on(keeper, stream, self.request_timeout).await,
        };
        if ttl.is_err() {
            *slot = None;
        }
        ttl
    }
}

async fn renew_on(
    keeper: &mut LeaseKeeper,
    stream: &mut LeaseKeepAliveStream,
    timeout: Duration,
) -> Result<i64, StoreError> {
    let round = async {
        keeper.keep_alive().await?;
        stream.message().await
    };
    match tokio::time::timeout(timeout, round).await {
        Ok(Ok(Some(answer))) => Ok(answer.ttl()),
        Ok(Ok(None)) => Err(StoreError::Unavailable(
            "etcd closed the lease keep-alive stream".into(),
        )),
        Ok(Err(e)) => Err(error("a lease keep-alive", e)),
        Err(_) => Err(StoreError::Unavailable(format!(
            "etcd did not answer a lease keep-alive within {timeout:?}"
        ))),
    }
}

/// Whether etcd said that a lease does not exist: the `NOT_FOUND` code etcd gives a request naming an
/// unknown lease (`ErrGRPCLeaseNotFound`; no other key-value or lease request answers `NOT_FOUND`), or the
/// TTL-0 first answer on which etcd-client refuses to open a keep-alive (its only `LeaseKeepAliveError` once
/// the stream is open).
fn lease_not_found(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => status.code() == tonic::Code::NotFound,
        etcd_client::Error::LeaseKeepAliveError(_) => true,
        _ => false,
    }
}

/// Maps an etcd client error about a request that named `lease` (if any) to a [`StoreError`].
fn error_about(what: &str, lease: Option<LeaseId>, e: etcd_client::Error) -> StoreError {
    match lease {
        Some(lease) if lease_not_found(&e) => StoreError::LeaseNotFound(lease),
        _ => error(what, e),
    }
}

/// Maps an etcd client error to a [`StoreError`].
fn error(what: &str, e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    use tonic::Code;
    match e {
        E::GRpcStatus(status) => {
            let message = format!("etcd refused {what}: {}", status.message());
            match status.code() {
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                    StoreError::Unavailable(message)
                }
                Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
                    StoreError::InvalidArgument(message)
                }
                _ => StoreError::Backend(message),
            }
        }
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) | E::LeaseKeepAliveError(_) => {
            StoreError::Unavailable(format!("etcd {what}: {e}"))
        }
        other => StoreError::Backend(format!("etcd {what}: {other}")),
    }
}

fn etcd_op(op: CompareOp) -> etcd_client::CompareOp {
    match op {
        CompareOp::Equal => etcd_client::CompareOp::Equal,
        CompareOp::NotEqual => etcd_client::CompareOp::NotEqual,
        CompareOp::Less => etcd_client::CompareOp::Less,
        CompareOp::Greater => etcd_client::CompareOp::Greater,
    }
}

fn put_options(lease: Option<LeaseId>) -> Option<PutOptions> {
    lease.map(|l| PutOptions::new().with_lease(l))
}

fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> Result<Revision, StoreError> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| StoreError::Backend("etcd answered without a response header".into()))
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    fn name(&self) -> &'static str {
        "etcd"
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Self::check_key(key)?;
        let mut client = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        let answer = self
            .timed("a get", client.get(self.full(key), None))
            .await?;
        answer.kvs().first().map(|kv| self.kv(kv)).transpose()
    }

    async fn range(&self, prefix: &str) -> Result<Range, StoreError> {
        Self::check_key(prefix)?;
        let mut client = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        let options = GetOptions::new().with_prefix();
        let answer = self
            .timed("a range", client.get(self.full(prefix), Some(options)))
            .await?;
        let kvs = answer
            .kvs()
            .iter()
            .map(|kv| self.kv(kv))
            .collect::<Result<_, _>>()?;
        Ok(Range {
            kvs,
            revision: revision_of(answer.header())?,
        })
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, StoreError> {
        Self::check_key(key)?;
        let mut client = self.client.kv_client();
        let call = client.put(self.full(key), value, put_options(lease));
        let answer = self.timed_lease("a put", lease, call).await?;
        revision_of(answer.header())
    }

    async fn delete(&self, key: &str) -> Result<(bool, Revision), StoreError> {
        Self::check_key(key)?;
        let mut client = self.client.kv_client();
        let answer = self
            .timed("a delete", client.delete(self.full(key), None))
            .await?;
        Ok((answer.deleted() > 0, revision_of(answer.header())?))
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        Self::check_key(prefix)?;
        let mut client = self.client.kv_client();
        let options = DeleteOptions::new().with_prefix();
        let call = client.delete(self.full(prefix), Some(options));
        let answer = self.timed("a delete", call).await?;
        Ok(answer.deleted().max(0) as u64)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        let mut leases = Vec::new();
        let mut compares = Vec::with_capacity(txn.compare.len());
        for Compare { key, op, target } in &txn.compare {
            Self::check_key(key)?;
            let (key, op) = (self.full(key), etcd_op(*op));
            compares.push(match target {
                CompareTarget::Version(v) => etcd_client::Compare::version(key, op, *v),
                CompareTarget::ModRevision(r) => etcd_client::Compare::mod_revision(key, op, *r),
                CompareTarget::CreateRevision(r) => {
                    etcd_client::Compare::create_revision(key, op, *r)
                }
                CompareTarget::Value(v) => etcd_client::Compare::value(key, op, v.clone()),
            });
        }
        let mut ops = |branch: &[TxnOp]| -> Result<Vec<etcd_client::TxnOp>, StoreError> {
            let mut out = Vec::with_capacity(branch.len());
            for op in branch {
                out.push(match op {
                    TxnOp::Get(key) => {
                        Self::check_key(key)?;
                        etcd_client::TxnOp::get(self.full(key), None)
                    }
                    TxnOp::Put { key, value, lease } => {
                        Self::check_key(key)?;
                        leases.extend(*lease);
                        etcd_client::TxnOp::put(self.full(key), value.clone(), put_options(*lease))
                    }
                    TxnOp::Delete(key) => {
                        Self::check_key(key)?;
                        etcd_client::TxnOp::delete(self.full(key), None)
                    }
                    TxnOp::DeletePrefix(prefix) => {
                        Self::check_key(prefix)?;
                        let options = DeleteOptions::new().with_prefix();
                        etcd_client::TxnOp::delete(self.full(prefix), Some(options))
                    }
                });
            }
            Ok(out)
        };
        let request = etcd_client::Txn::new()
            .when(compares)
            .and_then(ops(&txn.success)?)
            .or_else(ops(&txn.failure)?);
        let mut client = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        let answer = self
            .timed_lease(
                "a transaction",
                leases.first().copied(),
                client.txn(request),
            )
            .await?;
        let mut gets = Vec::new();
        for response in answer.op_responses() {
            if let TxnOpResponse::Get(get) = response {
                gets.push(get.kvs().first().map(|kv| self.kv(kv)).transpose()?);
            }
        }
        Ok(TxnResult {
            succeeded: answer.succeeded(),
            revision: revision_of(answer.header())?,
            gets,
        })
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        Self::check_key(prefix)?;
        if from < 0 {
            return Err(StoreError::InvalidArgument(format!(
                "watch from revision {from}"
            )));
        }
        let mut options = WatchOptions::new().with_prefix();
        if from > 0 {
            options = options.with_start_revision(from);
        }
        let mut client = self
            .client
            .watch_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        let mut stream = self
            .timed("a watch", client.watch(self.full(prefix), Some(options)))
            .await?;
        // The watch is in place once etcd says it is created.
        let created = self.timed("a watch", stream.message()).await?;
        let Some(created) = created else {
            return Err(StoreError::Unavailable(
                "etcd closed the watch at once".into(),
            ));
        };
        let mut state = WatchState {
            stream,
            namespace: self.namespace.clone(),
            pending: std::collections::VecDeque::new(),
            next: from,
            done: false,
        };
        if created.canceled() {
            // Compacted, or refused: report it as the first item.
            state.pending.push_back(Err(canceled(&created, from)));
        } else if !created.events().is_empty() {
            state.push_events(&created);
        }
        let stream = futures::stream::unfold(state, |mut state| async move {
            let item = state.next_item().await?;
            Some((item, state))
        });
        Ok(Box::pin(stream))
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        let mut client = self.client.kv_client();
        let options = GetOptions::new().with_count_only();
        let answer = self
            .timed("a revision read", client.get(self.full("/"), Some(options)))
            .await?;
        revision_of(answer.header())
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        if ttl.is_zero() {
            return Err(StoreError::InvalidArgument(format!(
                "lease TTL {ttl:?}: must be above zero"
            )));
        }
        // etcd counts whole seconds.
        let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let seconds = i64::try_from(seconds).unwrap_or(i64::MAX);
        let mut client = self.client.lease_client();
        let answer = self
            .timed("a lease grant", client.grant(seconds, None))
            .await?;
        if !answer.error().is_empty() {
            return Err(StoreError::Backend(format!(
                "etcd refused a lease: {}",
                answer.error()
            )));
        }
        Ok(answer.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        let keeper = self.keeper(lease);
        match self.renew(lease, &keeper).await {
            Ok(ttl) if ttl > 0 => Ok(Duration::from_secs(ttl as u64)),
            Ok(_) => {
                self.forget_keeper(lease);
                Err(StoreError::LeaseNotFound(lease))
            }
            Err(e) => {
                if matches!(e, StoreError::LeaseNotFound(_)) {
                    self.forget_keeper(lease);
                }
                Err(e)
            }
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.forget_keeper(lease);
        let mut client = self.client.lease_client();
        self.timed_lease("a lease revoke", Some(lease), client.revoke(lease))
            .await
            .map(|_| ())
    }

    async fn campaign(
        &self,
        election: &str,
        value: Vec<u8>,
        lease: LeaseId,
    ) -> Result<Leadership, StoreError> {
        Self::check_key(election)?;
        // No timeout: a campaign waits for as long as another candidate leads.
        let mut client = self.client.election_client();
        let answer = client
            .campaign(self.full(election), value, lease)
            .await
            .map_err(|e| error_about("a campaign", Some(lease), e))?;
        let leader = answer
            .leader()
            .ok_or_else(|| StoreError::Backend("etcd elected no leader key".into()))?;
        Ok(Leadership {
            election: election.to_string(),
            key: self.local(leader.key())?,
            create_revision: leader.rev(),
            lease: leader.lease(),
        })
    }
}

struct WatchState {
    stream: etcd_client::WatchStream,
    namespace: String,
    pending: std::collections::VecDeque<Result<WatchBatch, StoreError>>,
    /// The first revision not yet delivered (for error messages).
    next: Revision,
    done: bool,
}

fn canceled(answer: &etcd_client::WatchResponse, next: Revision) -> StoreError {
    if answer.compact_revision() > 0 {
        StoreError::Compacted {
            requested: next,
            compacted: answer.compact_revision() - 1,
        }
    } else {
        StoreError::Unavailable(format!(
            "etcd canceled the watch: {}",
            answer.cancel_reason()
        ))
    }
}

impl WatchState {
    /// Splits one answer into one batch per revision.
    fn push_events(&mut self, answer: &etcd_client::WatchResponse) {
        let mut batch: Option<WatchBatch> = None;
        for event in answer.events() {
            let Some(kv) = event.kv() else { continue };
            let key = match std::str::from_utf8(kv.key())
                .ok()
                .and_then(|k| k.strip_prefix(self.namespace.as_str()))
            {
                Some(k) => k.to_string(),
                None => {
                    self.pending.push_back(Err(StoreError::Corrupt(format!(
                        "watched key {:?} is not UTF-8 or outside the namespace",
                        kv.key()
                    ))));
                    return;
                }
            };
            let revision = kv.mod_revision();
            let event = match event.event_type() {
                etcd_client::EventType::Put => Event::Put(KeyValue {
                    key,
                    value: kv.value().to_vec(),
                    create_revision: kv.create_revision(),
                    mod_revision: revision,
                    version: kv.version(),
                    lease: (kv.lease() != 0).then_some(kv.lease()),
                }),
                etcd_client::EventType::Delete => Event::Delete {
                    key,
                    mod_revision: revision,
                },
            };
            match &mut batch {
                Some(b) if b.revision == revision => b.events.push(event),
                _ => {
                    if let Some(done) = batch.take() {
                        self.pending.push_back(Ok(done));
                    }
                    batch = Some(WatchBatch {
                        revision,
                        events: vec![event],
                    });
                }
            }
        }
        if let Some(done) = batch {
            self.next = done.revision + 1;
            self.pending.push_back(Ok(done));
        }
    }

    async fn next_item(&mut self) -> Option<Result<WatchBatch, StoreError>> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                if item.is_err() {
                    self.done = true;
                    self.pending.clear();
                }
                return Some(item);
            }
            if self.done {
                return None;
            }
            match self.stream.message().await {
                Ok(Some(answer)) if answer.canceled() => {
                    self.pending.push_back(Err(canceled(&answer, self.next)));
                }
                Ok(Some(answer)) => self.push_events(&answer),
                Ok(None) => {
                    let gone = StoreError::Unavailable("etcd ended the watch stream".into());
                    self.pending.push_back(Err(gone));
                }
                Err(e) => self.pending.push_back(Err(error("a watch", e))),
            }
        }
    }
}
