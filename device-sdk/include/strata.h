/*
 * strata.h: the C ABI of the Strata device SDK (Rust crate strata-device-sdk, src/ffi.rs).
 *
 * Link against libstrata_device_sdk.a (plus, on Linux: -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc) or
 * libstrata_device_sdk.so.
 *
 * Conventions:
 *  - Handles are opaque: create them with strata_client_new / strata_infer, free them with the matching
 *    *_free function (NULL is accepted and ignored).
 *  - Every call that can fail returns an int status: STRATA_OK (0) or one of STRATA_ERR_*. The failure's
 *    message is strata_last_error(), per thread.
 *  - Strings are NUL-terminated UTF-8; buffers always come with an explicit length.
 *  - NULL pointers and invalid UTF-8 are reported as STRATA_ERR_INVALID_ARGUMENT, never a crash; the SDK
 *    never unwinds a Rust panic into C (a panic is reported as STRATA_ERR_INTERNAL).
 *  - A client may be used from several threads at once. Calls block until done (the SDK runs its own
 *    threads); do not call them from a signal handler.
 */

#ifndef STRATA_H
#define STRATA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** A connection to a Strata cluster, with its route tables and loaded device stages. */
typedef struct strata_client strata_client;

/** A finished request: outputs, the plan that ran, timing. */
typedef struct strata_result strata_result;

/** Status codes. */
enum {
    /** Success. */
    STRATA_OK = 0,
    /** A malformed argument: a NULL pointer, invalid UTF-8, data_len that does not match the shape, ... */
    STRATA_ERR_INVALID_ARGUMENT = 1,
    /** The inputs do not match the model: an unknown or missing name, the wrong element type or shape. */
    STRATA_ERR_INVALID_INPUT = 2,
    /** The cluster does not know the model. */
    STRATA_ERR_UNKNOWN_MODEL = 3,
    /** No plan of the model satisfies the request's privacy level. */
    STRATA_ERR_NO_PLAN = 4,
    /** Nothing reachable could serve the request (and no local fallback could). */
    STRATA_ERR_UNAVAILABLE = 5,
    /** The request's deadline passed. */
    STRATA_ERR_DEADLINE = 6,
    /** Anything else, including a bug in the SDK. */
    STRATA_ERR_INTERNAL = 7,
    /** The cluster refused this client: no certificate, one from another CA, or a role that may not do this. */
    STRATA_ERR_DENIED = 8
};

/** Privacy levels: how far a request's data may travel. A request can only tighten its model's level. */
enum {
    /** Keep the model's own level. */
    STRATA_PRIVACY_MODEL = 0,
    /** Nothing leaves the device. */
    STRATA_PRIVACY_DEVICE = 1,
    /** Nothing reaches the cloud tier. */
    STRATA_PRIVACY_EDGE = 2,
    /** No raw model input crosses the network; only intermediate activations travel. */
    STRATA_PRIVACY_FEATURES = 3,
    /** No constraint. */
    STRATA_PRIVACY_OPEN = 4
};

/** Element types: the ONNX TensorProto.DataType codes. */
enum {
    STRATA_FLOAT32 = 1,
    STRATA_UINT8 = 2,
    STRATA_INT8 = 3,
    STRATA_UINT16 = 4,
    STRATA_INT16 = 5,
    STRATA_INT32 = 6,
    STRATA_INT64 = 7,
    /** One byte per element, 0 or 1. */
    STRATA_BOOL = 9,
    STRATA_FLOAT16 = 10,
    STRATA_FLOAT64 = 11,
    STRATA_UINT32 = 12,
    STRATA_UINT64 = 13
};

/**
 * A dense tensor: little-endian elements in C (row-major) order.
 * data_len must be product(shape[0..rank]) * element size, in bytes; a scalar has rank 0.
 */
typedef struct {
    /** The model input or output name. */
    const char *name;
    /** One of the STRATA_FLOAT32, ... codes. */
    int32_t dtype;
    /** rank dimensions (may be NULL when rank is 0). */
    const int64_t *shape;
    /** Number of dimensions. */
    size_t rank;
    /** data_len bytes (may be NULL when data_len is 0). */
    const void *data;
    /** Size of data in bytes. */
    size_t data_len;
} strata_tensor;

/** What one request asks for. */
typedef struct {
    /** End-to-end latency budget in ms; 0 means none; negative, NaN or infinite: STRATA_ERR_INVALID_ARGUMENT. */
    double latency_ms;
    /** Device energy budget in mJ; 0 means none; negative, NaN or infinite: STRATA_ERR_INVALID_ARGUMENT. */
    double energy_mj;
    /** One of STRATA_PRIVACY_*. */
    int32_t privacy;
    /** What to minimise: 0 = the default policy (energy under a latency budget or on low battery, latency
     *  otherwise), 1 = latency, 2 = device energy. */
    int32_t objective;
    /** Non-zero: only plans whose device stages are here already (loaded or in the stage cache); never wait
     *  for a download. (Added before the first release: the ABI is not frozen yet; from the first release on,
     *  this struct only grows through a new function.) */
    int32_t local_only;
} strata_constraints;

/**
 * What a client's requests have done since it was made (strata_client_counters). Every field is a running
 * total, so a rate is the difference of two reads over their interval; export them to the app's own metrics
 * if wanted (the SDK exports nothing itself).
 */
typedef struct {
    /** Requests made. */
    uint64_t requests;
    /** Requests that returned outputs. */
    uint64_t succeeded;
    /** Requests that failed, for any reason. */
    uint64_t failed;
    /** Of the failures: no plan satisfied the constraints. */
    uint64_t failed_no_plan;
    /** Of the failures: the deadline passed. */
    uint64_t failed_deadline;
    /** Of the failures: no agent could serve. */
    uint64_t failed_unavailable;
    /** Succeeded requests that ran wholly on the device. */
    uint64_t on_device;
    /** Succeeded requests with a stage on an agent. */
    uint64_t offloaded;
    /** Plans that failed and were replaced by the next, over all requests. */
    uint64_t fallbacks;
    /** Requests that ran a close runner-up to refresh its estimates. */
    uint64_t explored;
    /** Succeeded requests slower than their latency budget. */
    uint64_t over_latency_budget;
    /** Tensor bytes the device sent to agents. */
    uint64_t bytes_sent;
    /** Tensor bytes the device received from agents. */
    uint64_t bytes_received;
    /** End-to-end time of the succeeded requests, summed, ms. */
    double latency_ms;
    /** Compute on the device, summed, ms. */
    double device_compute_ms;
    /** Device energy the chosen plans were predicted to use, summed, mJ. */
    double predicted_energy_mj;
} strata_counters;

/**
 * The message of the last failed call on this thread ("" after a successful one). Never NULL. The string is
 * valid until the next Strata call on this thread: copy it to keep it.
 */
const char *strata_last_error(void);

/**
 * Creates a client. endpoints is a comma-separated list of control-plane or agent addresses ("host:port" or
 * URLs), tried in order. Nothing is connected yet: route tables arrive in the background and the first request
 * for a model fetches its table if needed. On success *out is a client to free with strata_client_free; on
 * failure *out is NULL.
 */
int strata_client_new(const char *endpoints, strata_client **out);

/**
 * strata_client_new with a device stage cache in the directory cache_dir (created if needed; shared safely by
 * every process that names it; at most cache_max_bytes, least recently used stages evicted first; 0: 1 GiB).
 * Stages and route tables kept there serve requests when the cluster cannot be reached. cache_dir NULL: no
 * cache or "", as strata_client_new.
 */
int strata_client_new_with_cache(const char *endpoints, const char *cache_dir, uint64_t cache_max_bytes,
                                 strata_client **out);

/**
 * strata_client_new_with_cache over mutual TLS: ca_pem is the cluster CA bundle, cert_pem and key_pem this
 * device's certificate and private key (paths of PEM files; all three, or all NULL for plain HTTP/2). The files
 * are read now (a bad one is STRATA_ERR_INVALID_ARGUMENT, and strata_last_error says why) and again when they
 * change, so a certificate can be rotated without a new client. Every agent a request goes to must prove, by
 * its certificate, that it is a node of the tier of the stage it is sent.
 */
int strata_client_new_tls(const char *endpoints, const char *cache_dir, uint64_t cache_max_bytes,
                          const char *ca_pem, const char *cert_pem, const char *key_pem, strata_client **out);

/** Frees a client and its caches. NULL is a no-op. No other thread may be using it. */
void strata_client_free(strata_client *client);

/** Copies client's counters into *out. */
int strata_client_counters(const strata_client *client, strata_counters *out);

/**
 * Reports the device's power state: battery_pct in 0..100 (negative: unknown), charging non-zero on external
 * power. Requests without an objective save energy when the battery is below 20 % and not charging.
 */
int strata_set_power_state(strata_client *client, double battery_pct, int charging);

/**
 * Fetches and loads the device stages of every plan of model, so that the model keeps working on the device
 * when the network is gone.
 */
int strata_prepare(strata_client *client, const char *model);

/**
 * Runs model on n_inputs named input tensors (copied: the caller keeps ownership) under constraints (NULL: no
 * budgets, the model's privacy level). The SDK picks a plan, runs its device stage here, sends the rest on,
 * and falls back to other plans or the device when the network fails. On success *out is a result to free
 * with strata_result_free; on failure *out is NULL.
 */
int strata_infer(strata_client *client, const char *model, const strata_tensor *inputs, size_t n_inputs,
                 const strata_constraints *constraints, strata_result **out);

/** The number of outputs of a result (0 for NULL). */
size_t strata_result_output_count(const strata_result *result);

/**
 * Describes output i (in the model's output order, 0-based) in *out. The pointers in *out borrow from the
 * result: they stay valid until strata_result_free.
 */
int strata_result_output(const strata_result *result, size_t i, strata_tensor *out);

/** The id of the plan that served the request (NULL for a NULL result); valid until strata_result_free. */
const char *strata_result_plan(const strata_result *result);

/** End-to-end time of the request in ms (NaN for a NULL result). */
double strata_result_total_ms(const strata_result *result);

/** Frees a result and everything it handed out. NULL is a no-op. */
void strata_result_free(strata_result *result);

#ifdef __cplusplus
}
#endif

#endif /* STRATA_H */
