/*
 * infer: run one float32 input through a model served by a Strata cluster, from C.
 *
 *   infer ENDPOINT MODEL INPUT_NAME RAW_F32_FILE D0,D1,.. OUT_FILE [privacy]
 *
 * RAW_F32_FILE holds little-endian float32 elements in C order; the first output's raw bytes are written to
 * OUT_FILE. privacy is a STRATA_PRIVACY_* code (0 = the model's level, 1 = device, 2 = edge, 3 = features,
 * 4 = open). Exits non-zero with the SDK's message on any error. Also checks two error paths (an unknown input
 * name and a NULL client) and prints the outcome. With STRATA_TLS_DIR set (a directory holding ca.pem, cert.pem
 * and key.pem, as `strata cert issue` writes it), the client speaks mutual TLS.
 *
 * Build (from device-sdk/, after `cargo build -p strata-device-sdk`):
 *   cc -Iinclude examples/c/infer.c ../target/debug/libstrata_device_sdk.a \
 *      -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc -o infer
 */

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata.h"

#define MAX_RANK 16

static const char *status_name(int status) {
    switch (status) {
    case STRATA_OK: return "STRATA_OK";
    case STRATA_ERR_INVALID_ARGUMENT: return "STRATA_ERR_INVALID_ARGUMENT";
    case STRATA_ERR_INVALID_INPUT: return "STRATA_ERR_INVALID_INPUT";
    case STRATA_ERR_DENIED: return "STRATA_ERR_DENIED";
    case STRATA_ERR_UNKNOWN_MODEL: return "STRATA_ERR_UNKNOWN_MODEL";
    case STRATA_ERR_NO_PLAN: return "STRATA_ERR_NO_PLAN";
    case STRATA_ERR_UNAVAILABLE: return "STRATA_ERR_UNAVAILABLE";
    case STRATA_ERR_DEADLINE: return "STRATA_ERR_DEADLINE";
    case STRATA_ERR_INTERNAL: return "STRATA_ERR_INTERNAL";
    default: return "unknown status";
    }
}

static int report(const char *what, int status) {
    fprintf(stderr, "infer: %s failed: %s: %s\n", what, status_name(status), strata_last_error());
    return 1;
}

/* Reads a whole file into a malloc'd buffer; NULL (with a message) on failure. */
static unsigned char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return NULL;
    }
    unsigned char *buf = NULL;
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0) size = ftell(f);
    if (size >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        buf = malloc(size > 0 ? (size_t)size : 1);
        if (buf && fread(buf, 1, (size_t)size, f) != (size_t)size) {
            free(buf);
            buf = NULL;
        }
    }
    fclose(f);
    if (!buf) {
        fprintf(stderr, "infer: cannot read %s\n", path);
        return NULL;
    }
    *len = (size_t)size;
    return buf;
}

static int write_file(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        return -1;
    }
    size_t written = len ? fwrite(data, 1, len, f) : 0;
    if (fclose(f) != 0 || written != len) {
        fprintf(stderr, "infer: cannot write %s\n", path);
        return -1;
    }
    return 0;
}

/* Parses "1,3,224,224"; -1 on a malformed list. */
static int parse_shape(const char *text, int64_t *dims, size_t *rank) {
    *rank = 0;
    const char *p = text;
    while (*p) {
        char *end = NULL;
        long long d = strtoll(p, &end, 10);
        if (end == p || d < 0 || *rank == MAX_RANK || (*end != ',' && *end != '\0')) return -1;
        dims[(*rank)++] = (int64_t)d;
        p = *end == ',' ? end + 1 : end;
    }
    return *rank > 0 ? 0 : -1;
}

/* The SDK must reject an unknown input name as STRATA_ERR_INVALID_INPUT and a NULL client as
 * STRATA_ERR_INVALID_ARGUMENT, each with a message and no result. */
static int check_error_paths(strata_client *client, const char *model, const strata_tensor *input,
                             const strata_constraints *constraints) {
    strata_tensor wrong = *input;
    wrong.name = "no_such_input";
    strata_result *result = NULL;
    int status = strata_infer(client, model, &wrong, 1, constraints, &result);
    if (status != STRATA_ERR_INVALID_INPUT || result != NULL || strlen(strata_last_error()) == 0) {
        fprintf(stderr, "error-path check FAILED: an unknown input gave %s: %s\n", status_name(status),
                strata_last_error());
        strata_result_free(result);
        return -1;
    }
    printf("error-path check passed: %s: %s\n", status_name(status), strata_last_error());

    status = strata_infer(NULL, model, input, 1, constraints, &result);
    if (status != STRATA_ERR_INVALID_ARGUMENT || result != NULL || strlen(strata_last_error()) == 0) {
        fprintf(stderr, "null-client check FAILED: %s: %s\n", status_name(status), strata_last_error());
        strata_result_free(result);
        return -1;
    }
    printf("null-client check passed: %s: %s\n", status_name(status), strata_last_error());
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 7 || argc > 8) {
        fprintf(stderr, "usage: %s ENDPOINT MODEL INPUT_NAME RAW_F32_FILE D0,D1,.. OUT_FILE [privacy]\n",
                argv[0]);
        return 2;
    }
    const char *endpoint = argv[1], *model = argv[2], *input_name = argv[3];
    const char *input_file = argv[4], *shape_text = argv[5], *output_file = argv[6];
    strata_constraints constraints = {0.0, 0.0, STRATA_PRIVACY_MODEL, 0, 0};
    if (argc == 8) {
        char *end = NULL;
        long privacy = strtol(argv[7], &end, 10);
        if (end == argv[7] || *end != '\0') {
            fprintf(stderr, "infer: privacy must be a number 0..4, got \"%s\"\n", argv[7]);
            return 2;
        }
        constraints.privacy = (int32_t)privacy;
    }
    int64_t dims[MAX_RANK];
    size_t rank = 0;
    if (parse_shape(shape_text, dims, &rank) != 0) {
        fprintf(stderr, "infer: bad shape \"%s\" (expected D0,D1,.. with at most %d dimensions)\n", shape_text,
                MAX_RANK);
        return 2;
    }
    size_t data_len = 0;
    unsigned char *data = read_file(input_file, &data_len);
    if (!data) return 1;

    int code = 1;
    strata_client *client = NULL;
    strata_result *result = NULL;
    /* A stage cache where STRATA_CACHE_DIR says (unset: none); mutual TLS with STRATA_TLS_DIR's material. */
    const char *tls_dir = getenv("STRATA_TLS_DIR");
    char ca[4096], cert[4096], key[4096];
    int status;
    if (tls_dir && *tls_dir) {
        snprintf(ca, sizeof ca, "%s/ca.pem", tls_dir);
        snprintf(cert, sizeof cert, "%s/cert.pem", tls_dir);
        snprintf(key, sizeof key, "%s/key.pem", tls_dir);
        status = strata_client_new_tls(endpoint, getenv("STRATA_CACHE_DIR"), 0, ca, cert, key, &client);
    } else {
        status = strata_client_new_with_cache(endpoint, getenv("STRATA_CACHE_DIR"), 0, &client);
    }
    if (status != STRATA_OK) {
        report("strata_client_new", status);
        goto done;
    }
    status = strata_prepare(client, model);
    if (status != STRATA_OK) {
        report("strata_prepare", status);
        goto done;
    }
    strata_tensor input = {input_name, STRATA_FLOAT32, dims, rank, data, data_len};
    status = strata_infer(client, model, &input, 1, &constraints, &result);
    if (status != STRATA_OK) {
        report("strata_infer", status);
        goto done;
    }
    if (strata_result_output_count(result) == 0) {
        fprintf(stderr, "infer: the model returned no output\n");
        goto done;
    }
    strata_tensor output;
    status = strata_result_output(result, 0, &output);
    if (status != STRATA_OK) {
        report("strata_result_output", status);
        goto done;
    }
    if (write_file(output_file, output.data, output.data_len) != 0) goto done;
    printf("plan %s\n", strata_result_plan(result));
    printf("total_ms %.3f\n", strata_result_total_ms(result));
    printf("output %s: dtype %" PRId32 ", shape [", output.name, output.dtype);
    for (size_t i = 0; i < output.rank; i++) printf(i ? ",%" PRId64 : "%" PRId64, output.shape[i]);
    printf("], %zu bytes written to %s\n", output.data_len, output_file);

    if (check_error_paths(client, model, &input, &constraints) != 0) goto done;

    /* What the client did: the request that succeeded and the one refused above. */
    strata_counters counters;
    status = strata_client_counters(client, &counters);
    if (status != STRATA_OK) {
        report("strata_client_counters", status);
        goto done;
    }
    printf("counters requests %" PRIu64 " succeeded %" PRIu64 " failed %" PRIu64 " on_device %" PRIu64
           " offloaded %" PRIu64 " bytes_sent %" PRIu64 " bytes_received %" PRIu64 " latency_ms %.3f\n",
           counters.requests, counters.succeeded, counters.failed, counters.on_device, counters.offloaded,
           counters.bytes_sent, counters.bytes_received, counters.latency_ms);
    code = 0;

done:
    strata_result_free(result);
    strata_client_free(client);
    free(data);
    return code;
}
