//! The C ABI (`include/strata.h`): opaque handles, explicit lengths, and an `int` status from every call
//! (0 is success). The message of the last failure on a thread is [`strata_last_error`]. Everything runs on
//! [`blocking::Client`], which owns its runtime, so C callers need no async machinery.
//!
//! No panic crosses into C: every exported body runs under [`catch_unwind`] and a panic becomes
//! [`STRATA_ERR_INTERNAL`]. NULL pointers, invalid UTF-8 and tensors whose byte count does not match their
//! shape are [`STRATA_ERR_INVALID_ARGUMENT`] with a message that says which argument is wrong.

// Unsafe code is allowed in this module alone: a C ABI has to export unmangled symbols and read the raw
// pointers C hands in. Each pointer is checked for NULL before it is read, and the `# Safety` sections state
// what the caller must guarantee for the rest.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;

use crate::route::Budget;
use crate::{
    ClientConfig, Constraints, DType, Objective, PowerState, Privacy, SdkError, TensorData,
    blocking,
};

/// Success.
pub const STRATA_OK: c_int = 0;
/// An argument is malformed: a NULL pointer, invalid UTF-8, a tensor whose bytes do not match its shape.
pub const STRATA_ERR_INVALID_ARGUMENT: c_int = 1;
/// The inputs do not match the model (names, element types, shapes).
pub const STRATA_ERR_INVALID_INPUT: c_int = 2;
/// The cluster does not know the model.
pub const STRATA_ERR_UNKNOWN_MODEL: c_int = 3;
/// No plan satisfies the request's privacy.
pub const STRATA_ERR_NO_PLAN: c_int = 4;
/// Nothing reachable could serve the request.
pub const STRATA_ERR_UNAVAILABLE: c_int = 5;
/// The request's deadline passed.
pub const STRATA_ERR_DEADLINE: c_int = 6;
/// Anything else, including a bug in the SDK.
pub const STRATA_ERR_INTERNAL: c_int = 7;
/// The cluster refused this client: no certificate, the wrong one, or a role that may not do this.
pub const STRATA_ERR_DENIED: c_int = 8;

/// Keep the model's own privacy level.
pub const STRATA_PRIVACY_MODEL: i32 = 0;
/// Nothing leaves the device.
pub const STRATA_PRIVACY_DEVICE: i32 = 1;
/// Nothing reaches the cloud tier.
pub const STRATA_PRIVACY_EDGE: i32 = 2;
/// No raw model input crosses the network.
pub const STRATA_PRIVACY_FEATURES: i32 = 3;
/// No constraint.
pub const STRATA_PRIVACY_OPEN: i32 = 4;

/// A tensor as C sees it (`strata_tensor`): little-endian elements in C order. `dtype` is an ONNX
/// `TensorProto.DataType` code and `data_len` must be `product(shape) * element size` bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct StrataTensor {
    /// NUL-terminated UTF-8 name.
    pub name: *const c_char,
    /// ONNX element type code (1 = float32, ...).
    pub dtype: i32,
    /// `rank` dimensions.
    pub shape: *const i64,
    /// Number of dimensions.
    pub rank: usize,
    /// `data_len` bytes.
    pub data: *const c_void,
    /// Size of `data` in bytes.
    pub data_len: usize,
}

/// A request's constraints (`strata_constraints`). A budget of 0 means none; a negative, NaN or infinite one
/// is refused (`STRATA_ERR_INVALID_ARGUMENT`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct StrataConstraints {
    /// End-to-end latency budget, ms.
    pub latency_ms: f64,
    /// Device energy budget, mJ.
    pub energy_mj: f64,
    /// One of the `STRATA_PRIVACY_*` codes.
    pub privacy: i32,
    /// What to minimise: 0 = the default policy, 1 = latency, 2 = device energy.
    pub objective: i32,
    /// Non-zero: only plans whose device stages are here already.
    pub local_only: i32,
}

/// An opaque client handle (`strata_client`).
pub struct StrataClient {
    inner: blocking::Client,
}

/// An opaque finished request (`strata_result`); it owns every pointer it hands out.
pub struct StrataResult {
    outputs: Vec<Output>,
    plan_id: CString,
    total_ms: f64,
}

struct Output {
    name: CString,
    shape: Vec<i64>,
    tensor: TensorData,
}

/// A failed call: its status code and message.
struct Failure {
    code: c_int,
    message: String,
}

type Outcome<T> = Result<T, Failure>;

fn invalid(message: impl Into<String>) -> Failure {
    Failure {
        code: STRATA_ERR_INVALID_ARGUMENT,
        message: message.into(),
    }
}

impl From<SdkError> for Failure {
    fn from(e: SdkError) -> Failure {
        let code = match &e {
            SdkError::InvalidArgument(_) => STRATA_ERR_INVALID_ARGUMENT,
            SdkError::InvalidInput(_) => STRATA_ERR_INVALID_INPUT,
            SdkError::UnknownModel(_) => STRATA_ERR_UNKNOWN_MODEL,
            SdkError::NoPlan(_) => STRATA_ERR_NO_PLAN,
            SdkError::Unavailable(_) => STRATA_ERR_UNAVAILABLE,
            SdkError::DeadlineExceeded(_) => STRATA_ERR_DEADLINE,
            SdkError::Local(_) => STRATA_ERR_INTERNAL,
            SdkError::Remote { code, .. } => match code {
                tonic::Code::InvalidArgument => STRATA_ERR_INVALID_INPUT,
                tonic::Code::NotFound => STRATA_ERR_UNKNOWN_MODEL,
                tonic::Code::DeadlineExceeded => STRATA_ERR_DEADLINE,
                tonic::Code::Unavailable
                | tonic::Code::ResourceExhausted
                | tonic::Code::Aborted
                | tonic::Code::Cancelled => STRATA_ERR_UNAVAILABLE,
                tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => STRATA_ERR_DENIED,
                _ => STRATA_ERR_INTERNAL,
            },
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    let message = c_string(message);
    // `try_with`: during thread teardown there is nowhere to keep it, and panicking here would abort.
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = message);
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Runs a call's body without letting a panic escape, records its message, and returns its status.
fn status(body: impl FnOnce() -> Outcome<()>) -> c_int {
    let failure = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            set_last_error("");
            return STRATA_OK;
        }
        Ok(Err(failure)) => failure,
        Err(payload) => Failure {
            code: STRATA_ERR_INTERNAL,
            message: format!(
                "internal error: the Strata SDK panicked: {}",
                panic_message(payload.as_ref())
            ),
        },
    };
    set_last_error(&failure.message);
    failure.code
}

/// For calls that return a value instead of a status: `fallback` if the body panics.
fn quietly<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

/// # Safety
/// `p` is NULL or points to a NUL-terminated string that outlives `'a`.
unsafe fn text<'a>(p: *const c_char, what: &str) -> Outcome<&'a str> {
    if p.is_null() {
        return Err(invalid(format!("{what} is NULL")));
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    let bytes = unsafe { CStr::from_ptr(p) };
    bytes
        .to_str()
        .map_err(|e| invalid(format!("{what} is not valid UTF-8: {e}")))
}

/// # Safety
/// `p` is NULL or points to a live, properly aligned `T` that outlives `'a`.
unsafe fn deref<'a, T>(p: *const T, what: &str) -> Outcome<&'a T> {
    // SAFETY: `as_ref` handles NULL; the rest is the caller's contract.
    unsafe { p.as_ref() }.ok_or_else(|| invalid(format!("{what} is NULL")))
}

/// A C array as a slice: empty when `len` is 0, an error when NULL otherwise.
///
/// # Safety
/// `p` is NULL or valid for `len` elements that outlive `'a`.
unsafe fn slice<'a, T>(p: *const T, len: usize, what: &str) -> Outcome<&'a [T]> {
    match (len, p.is_null()) {
        (0, _) => Ok(&[]),
        (_, true) => Err(invalid(format!("{what} is NULL but its length is {len}"))),
        // SAFETY: non-NULL and valid for `len` elements by the caller's contract.
        (_, false) => Ok(unsafe { std::slice::from_raw_parts(p, len) }),
    }
}

/// Copies one C tensor into a named [`TensorData`], checking its byte count against its shape.
///
/// # Safety
/// The pointers in `t` are NULL or valid for `rank` dimensions and `data_len` bytes.
unsafe fn tensor_from_c(t: &StrataTensor, index: usize) -> Outcome<(String, TensorData)> {
    // SAFETY: the caller's contract.
    let name = unsafe { text(t.name, &format!("inputs[{index}].name")) }?.to_string();
    let bad = |why: String| invalid(format!("input \"{name}\": {why}"));
    let dtype = DType::from_onnx_code(t.dtype).ok_or_else(|| {
        bad(format!(
            "unknown dtype code {} (expected an ONNX TensorProto.DataType code such as STRATA_FLOAT32 = 1)",
            t.dtype
        ))
    })?;
    // SAFETY: the caller's contract.
    let dims = unsafe { slice(t.shape, t.rank, "shape") }.map_err(|f| bad(f.message))?;
    let shape = dims
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<usize>, _>>()
        .map_err(|_| bad(format!("shape {dims:?} has a negative dimension")))?;
    let elements = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    let expected = elements.and_then(|n| n.checked_mul(dtype.size()));
    if expected != Some(t.data_len) {
        return Err(bad(format!(
            "a {dtype} tensor of shape {dims:?} needs {} bytes ({} elements x {} bytes), but data_len is {}",
            expected.map_or("more than usize::MAX".into(), |e| e.to_string()),
            elements.map_or("too many".into(), |n| n.to_string()),
            dtype.size(),
            t.data_len
        )));
    }
    // SAFETY: the caller's contract.
    let data =
        unsafe { slice(t.data.cast::<u8>(), t.data_len, "data") }.map_err(|f| bad(f.message))?;
    let tensor = TensorData::new(dtype, shape, data.to_vec()).map_err(|e| bad(e.to_string()))?;
    Ok((name, tensor))
}

fn constraints_from_c(c: Option<&StrataConstraints>) -> Outcome<Constraints> {
    let Some(c) = c else {
        return Ok(Constraints::default());
    };
    // 0 (a zeroed struct) means no budget; anything else must be a budget (NaN or a negative is refused with
    // the library's own error, never read as "none").
    let budget = |kind: Budget, v: f64| -> Outcome<Option<f64>> {
        if v == 0.0 {
            return Ok(None);
        }
        kind.check(v)
            .map(Some)
            .map_err(|e| Failure::from(SdkError::from(e)))
    };
    let privacy = match c.privacy {
        STRATA_PRIVACY_MODEL => None,
        STRATA_PRIVACY_DEVICE => Some(Privacy::Device),
        STRATA_PRIVACY_EDGE => Some(Privacy::Edge),
        STRATA_PRIVACY_FEATURES => Some(Privacy::Features),
        STRATA_PRIVACY_OPEN => Some(Privacy::Open),
        other => {
            return Err(invalid(format!(
                "unknown privacy code {other} (expected 0 = model, 1 = device, 2 = edge, 3 = features, 4 = open)"
            )));
        }
    };
    let objective = match c.objective {
        0 => None,
        1 => Some(Objective::Latency),
        2 => Some(Objective::Energy),
        other => {
            return Err(invalid(format!(
                "unknown objective code {other} (expected 0 = default, 1 = latency, 2 = energy)"
            )));
        }
    };
    Ok(Constraints {
        latency_ms: budget(Budget::LatencyMs, c.latency_ms)?,
        energy_mj: budget(Budget::EnergyMj, c.energy_mj)?,
        privacy,
        objective,
        plan: None,
        local_only: c.local_only != 0,
    })
}

fn c_string(s: &str) -> CString {
    CString::new(s.replace('\0', "\\0")).unwrap_or_default()
}

/// The message of the last failed call on this thread (`""` after a success), valid until the next call on
/// this thread. Never NULL.
#[unsafe(no_mangle)]
pub extern "C" fn strata_last_error() -> *const c_char {
    quietly(c"internal error: no message".as_ptr(), || {
        LAST_ERROR.with(|e| e.borrow().as_ptr())
    })
}

/// Creates a client for a cluster. `endpoints` is a comma-separated list of `host:port` (or URLs) of control
/// planes or agents; nothing is connected until the first request. On success `*out` is a client to free with
/// [`strata_client_free`]; on failure it is NULL.
///
/// # Safety
/// `endpoints` is NULL or a NUL-terminated string; `out` is NULL or valid for one pointer write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn strata_client_new(
    endpoints: *const c_char,
    out: *mut *mut StrataClient,
) -> c_int {
    // SAFETY: the caller's contract, passed on; a NULL cache directory means none.
    unsafe { strata_client_new_with_cache(endpoints, ptr::null(), 0, out) }
}

/// [`strata_client_new_with_cache`] over mutual TLS: `ca_pem` is the cluster CA bundle, `cert_pem` and
/// `key_pem` this device's certificate and key (PEM file paths; all three, or all NULL for the plain
/// transport). The files are read now (a bad one fails here, with the reason) and again when they change, so
/// an app can rotate its certificate without a new client. Every agent must then prove it is a node of the
/// tier of the stage it is sent.
///
/// # Safety
/// `endpoints`, `cache_dir`, `ca_pem`, `cert_pem` and `key_pem` are NULL or NUL-terminated strings; `out` is
/// NULL or valid for one pointer write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn strata_client_new_tls(
    endpoints: *const c_char,
    cache_dir: *const c_char,
    cache_max_bytes: u64,
    ca_pem: *const c_char,
    cert_pem: *const c_char,
    key_pem: *const c_char,
    out: *mut *mut StrataClient,
) -> c_int {
    let transport = match (ca_pem.is_null(), cert_pem.is_null(), key_pem.is_null()) {
        (true, true, true) => Ok(strata_proto::transport::Transport::Plain),
        (false, false, false) => (|| {
            // SAFETY: the caller's contract.
            let path = |p, what| unsafe { text(p, what) }.map(std::path::PathBuf::from);
            let files = strata_proto::transport::TlsFiles {
                ca: path(ca_pem, "ca_pem")?,
                cert: path(cert_pem, "cert_pem")?,
                key: path(key_pem, "key_pem")?,
            };
            strata_proto::transport::Transport::tls(files).map_err(|e| invalid(e.to_string()))
        })(),
        _ => Err(invalid(
            "ca_pem, cert_pem and key_pem: give all three (mutual TLS) or none (plain)",
        )),
    };
    let transport = match transport {
        Ok(t) => t,
        Err(failure) => return status(|| Err(failure)),
    };
    // SAFETY: the caller's contract, passed on.
    unsafe { new_client(endpoints, cache_dir, cache_max_bytes, transport, out) }
}

/// [`strata_client_new`] with a device stage cache in `cache_dir` (NULL: none), bounded to `cache_max_bytes`
/// (0: 1 GiB), shared by every process that names it; stages and route tables kept there serve requests
/// when the cluster cannot be reached.
///
/// # Safety
/// `endpoints` and `cache_dir` are NULL or NUL-terminated strings; `out` is NULL or valid for one pointer
/// write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn strata_client_new_with_cache(
    endpoints: *const c_char,
    cache_dir: *const c_char,
    cache_max_bytes: u64,
    out: *mut *mut StrataClient,
) -> c_int {
    let plain = strata_proto::transport::Transport::Plain;
    // SAFETY: the caller's contract, passed on.
    unsafe { new_client(endpoints, cache_dir, cache_max_bytes, plain, out) }
}

/// The constructors' body.
///
/// # Safety
/// As [`strata_client_new_with_cache`].
unsafe fn new_client(
    endpoints: *const c_char,
    cache_dir: *const c_char,
    cache_max_bytes: u64,
    transport: strata_proto::transport::Transport,
    out: *mut *mut StrataClient,
) -> c_int {
    status(|| {
        // SAFETY: `as_mut` handles NULL; the rest is the caller's contract.
        let out = unsafe { out.as_mut() }.ok_or_else(|| invalid("out is NULL"))?;
        *out = ptr::null_mut();
        // SAFETY: the caller's contract.
        let endpoints = unsafe { text(endpoints, "endpoints") }?
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(String::from)
            .collect();
        let mut config = ClientConfig::new(endpoints);
        config.transport = transport;
        if !cache_dir.is_null() {
            // SAFETY: the caller's contract. An empty path (an unset variable's "") means none, as NULL.
            let dir = unsafe { text(cache_dir, "cache_dir") }?;
            config.cache_dir = (!dir.is_empty()).then(|| dir.into());
        }
        if cache_max_bytes > 0 {
            config.cache_max_bytes = cache_max_bytes;
        }
        let inner = blocking::Client::new(config)?;
        *out = Box::into_raw(Box::new(StrataClient { inner }));
        Ok(())
    })
}

/// Frees a client (NULL is a no-op). Its caches go with it.
///
/// # Safety
/// `client` is NULL or a pointer from [`strata_client_new`] not freed yet, and no other thread is using it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn strata_client_free(client: *mut StrataClient) {
    if !client.is_null() {
        // SAFETY: a pointer from `Box::into_raw` in `strata_client_new`, freed once.
        let client = unsafe { Box::from_raw(client) };
        quietly((), move || drop(client));
    }
}

/// Reports the device's power state: `battery_pct` in 0–100 (negative: unknown), `charging` non-zero when on
/// external power. Requests without an objective save energy on low battery.
///
/// # Safety
/// `client` is NULL or a live client.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn strata_set_power_state(
    client: *const StrataClient,
    battery_pct: f64,
    charging: c_int,
) -> c_int {
    status(|| {
        // SAFETY: the caller's contract.
        let client = unsafe { deref(client, "client")? };
        let battery = (battery_pct >= 0.0).then_some(battery_pct);
        let state = PowerState::new(battery, charging != 0).map_err(|e| invalid(e.to_string()))?;
        client.inner.as_async().set_power_state(state);
        Ok(())
    })
}

/// Copies `client`'s counters ([`crate::Counters`], `strata_counters` in C) into `*out`.
///
/// # Safety
/// `client` is NULL or a live client; `out` is NULL or valid for one `strata_counters` write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn strata_client_counters(
    client: *const StrataClient,
    out: *mut crate::Counters,
) -> c_int {
    status(|| {
        // SAFETY: `as_mut` handles NULL; the rest is the caller's contract.
        let out = unsafe { out.as_mut() }.ok_or_else(|| invalid("out is NULL"))?;
        // SAFETY: the caller's contract.
        let client = unsafe { deref(client, "client")? };
        *out = client.inner.counters();
        Ok(())
    })
}

/// Fetches and loads the device stages of every plan of `model`, so that it keeps working offline.
///
/// # Safety
/// `client` is NULL or a live client; `model` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn strata_prepare(
    client: *const StrataClient,
    model: *const c_char,
) -> c_int {
    status(|| {
        // SAFETY: the caller's contract.
        let (client, model) = unsafe { (deref(client, "client")?, text(model, "model")?) };
        Ok(client.inner.prepare(model)?)
    })
}

/// Runs `model` on `n_inputs` named tensors (copied; the caller keeps ownership) under `constraints` (NULL:
/// none). On success `*out` is a result to free with [`strata_result_free`]; on failure it is NULL.
///
/// # Safety
/// `client` is NULL or a live client; `model` is NULL or a NUL-terminated string; `inputs` is NULL or valid for
/// `n_inputs` tensors whose pointers are valid as [`StrataTensor`] describes; `constraints` is NULL or valid;
/// `out` is NULL or valid for one pointer write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn strata_infer(
    client: *const StrataClient,
    model: *const c_char,
    inputs: *const StrataTensor,
    n_inputs: usize,
    constraints: *const StrataConstraints,
    out: *mut *mut StrataResult,
) -> c_int {
    status(|| {
        // SAFETY: `as_mut` handles NULL; the rest is the caller's contract.
        let out = unsafe { out.as_mut() }.ok_or_else(|| invalid("out is NULL"))?;
        *out = ptr::null_mut();
        // SAFETY: the caller's contract.
        let (client, model) = unsafe { (deref(client, "client")?, text(model, "model")?) };
        // SAFETY: the caller's contract.
        let given = unsafe { slice(inputs, n_inputs, "inputs") }?;
        let mut tensors = HashMap::with_capacity(given.len());
        for (i, t) in given.iter().enumerate() {
            // SAFETY: the caller's contract.
            let (name, tensor) = unsafe { tensor_from_c(t, i) }?;
            if tensors.insert(name.clone(), tensor).is_some() {
                return Err(invalid(format!("input \"{name}\" is given twice")));
            }
        }
        // SAFETY: `as_ref` handles NULL; the rest is the caller's contract.
        let constraints = constraints_from_c(unsafe { constraints.as_ref() })?;
        let done = client.inner.infer(model, tensors, constraints)?;
        let outputs = done
            .outputs
            .into_iter()
            .map(|(name, tensor)| Output {
                name: c_string(&name),
                shape: tensor.shape.iter().map(|&d| d as i64).collect(),
                tensor,
            })
            .collect();
        *out = Box::into_raw(Box::new(StrataResult {
            outputs,
            plan_id: c_string(&done.plan_id),
            total_ms: done.total_ms,
        }));
        Ok(())
    })
}

/// The number of outputs of a result (0 for NULL).
///
/// # Safety
/// `result` is NULL or a live result.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn strata_result_output_count(result: *const StrataResult) -> usize {
    quietly(0, || {
        // SAFETY: NULL or a live result, by the caller's contract.
        unsafe { result.as_ref() }.map_or(0, |r| r.outputs.len())
    })
}

/// Describes output `i` (in the model's order) in `*out`. Its pointers borrow from the result and stay valid
/// until [`strata_result_free`].
///
/// # Safety
/// `result` is NULL or a live result; `out` is NULL or valid for one [`StrataTensor`] write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn strata_result_output(
    result: *const StrataResult,
    i: usize,
    out: *mut StrataTensor,
) -> c_int {
    status(|| {
        // SAFETY: the caller's contract.
        let result = unsafe { deref(result, "result") }?;
        // SAFETY: `as_mut` handles NULL; the rest is the caller's contract.
        let out = unsafe { out.as_mut() }.ok_or_else(|| invalid("out is NULL"))?;
        let o = result.outputs.get(i).ok_or_else(|| {
            invalid(format!(
                "output index {i} is out of range: the result has {} outputs",
                result.outputs.len()
            ))
        })?;
        *out = StrataTensor {
            name: o.name.as_ptr(),
            dtype: o.tensor.dtype.onnx_code(),
            shape: o.shape.as_ptr(),
            rank: o.shape.len(),
            data: o.tensor.data.as_ptr().cast(),
            data_len: o.tensor.data.len(),
        };
        Ok(())
    })
}

/// The id of the plan that ran (NULL for a NULL result), valid until [`strata_result_free`].
///
/// # Safety
/// `result` is NULL or a live result.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn strata_result_plan(result: *const StrataResult) -> *const c_char {
    quietly(ptr::null(), || {
        // SAFETY: NULL or a live result, by the caller's contract.
        unsafe { result.as_ref() }.map_or(ptr::null(), |r| r.plan_id.as_ptr())
    })
}

/// End-to-end time of the request, ms (NaN for a NULL result).
///
/// # Safety
/// `result` is NULL or a live result.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn strata_result_total_ms(result: *const StrataResult) -> f64 {
    quietly(f64::NAN, || {
        // SAFETY: NULL or a live result, by the caller's contract.
        unsafe { result.as_ref() }.map_or(f64::NAN, |r| r.total_ms)
    })
}

/// Frees a result and everything it handed out (NULL is a no-op).
///
/// # Safety
/// `result` is NULL or a pointer from [`strata_infer`] not freed yet.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn strata_result_free(result: *mut StrataResult) {
    if !result.is_null() {
        // SAFETY: a pointer from `Box::into_raw` in `strata_infer`, freed once.
        let result = unsafe { Box::from_raw(result) };
        quietly((), move || drop(result));
    }
}

/// A client may be shared by several threads (the header promises it).
const _: () = {
    const fn thread_safe<T: Send + Sync>() {}
    thread_safe::<StrataClient>();
};
