/*
 * The proxy-wasm ABI 0.2.1 as plain C, for modules built without an SDK:
 *
 *   clang --target=wasm32 -nostdlib -ffreestanding -Wl,--no-entry ...
 *
 * Host functions are imported from module "env"; the module's callbacks are
 * exported by name with EXPORT(). Every host call that returns bytes
 * (configuration, header values) allocates them inside the module through
 * proxy_on_memory_allocate, so the module must free() them afterwards.
 */
#ifndef MESHEXT_PROXY_WASM_H
#define MESHEXT_PROXY_WASM_H

typedef unsigned char uint8_t;
typedef unsigned int uint32_t;
typedef int int32_t;
typedef unsigned long long uint64_t;
typedef long long int64_t;
typedef unsigned long size_t;
typedef unsigned long uintptr_t;

#define NULL ((void *)0)

#define IMPORT(name) __attribute__((import_module("env"), import_name(#name)))
#define EXPORT(name) __attribute__((export_name(#name)))

/* Status codes returned by host functions. */
enum {
  WASM_OK = 0,
  WASM_NOT_FOUND = 1,
  WASM_BAD_ARGUMENT = 2,
  WASM_EMPTY = 7,
};

/* Actions returned by stream callbacks. */
enum { ACTION_CONTINUE = 0, ACTION_PAUSE = 1 };

enum {
  LOG_TRACE = 0,
  LOG_DEBUG = 1,
  LOG_INFO = 2,
  LOG_WARN = 3,
  LOG_ERROR = 4,
};

enum {
  BUFFER_VM_CONFIGURATION = 6,
  BUFFER_PLUGIN_CONFIGURATION = 7,
};

enum {
  MAP_REQUEST_HEADERS = 0,
  MAP_RESPONSE_HEADERS = 2,
};

enum { METRIC_COUNTER = 0, METRIC_GAUGE = 1, METRIC_HISTOGRAM = 2 };

IMPORT(proxy_log)
int32_t proxy_log(int32_t level, const char *message, size_t message_size);

IMPORT(proxy_get_buffer_bytes)
int32_t proxy_get_buffer_bytes(int32_t buffer_type, uint32_t start, uint32_t max_size,
                               char **data, size_t *size);

IMPORT(proxy_get_header_map_value)
int32_t proxy_get_header_map_value(int32_t map_type, const char *key, size_t key_size,
                                   char **value, size_t *value_size);

IMPORT(proxy_add_header_map_value)
int32_t proxy_add_header_map_value(int32_t map_type, const char *key, size_t key_size,
                                   const char *value, size_t value_size);

IMPORT(proxy_send_local_response)
int32_t proxy_send_local_response(uint32_t status_code, const char *details, size_t details_size,
                                  const char *body, size_t body_size, const char *headers,
                                  size_t headers_size, int32_t grpc_status);

IMPORT(proxy_define_metric)
int32_t proxy_define_metric(int32_t metric_type, const char *name, size_t name_size,
                            uint32_t *metric_id);

IMPORT(proxy_increment_metric)
int32_t proxy_increment_metric(uint32_t metric_id, int64_t offset);

/* Memory (alloc.c): a size-class allocator that reuses freed blocks. */
void *malloc(size_t size);
void free(void *ptr);
void *memcpy(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
/* Bytes of linear memory the module currently has. */
size_t wasm_memory_bytes(void);

/* Logging (runtime.c): joins up to four strings into one log line. */
void log_text(int32_t level, const char *a, const char *b, const char *c, const char *d);

/* Configuration text helpers (config.c). */
typedef struct {
  char *data; /* NUL-terminated, owned (free with free()) */
  size_t size;
} text_t;

/* Non-zero when the text's first non-blank character is '{'. */
int config_is_json(const char *data, size_t size);
/*
 * Looks up `key` in a JSON object of the text. Returns 1 and a freshly allocated
 * decoded string when the member exists and is a string, 0 when it is absent, and
 * -1 when the text is not a JSON object or the member is not a string; on -1,
 * *error says why.
 */
int json_string_member(const char *data, size_t size, const char *key, text_t *out,
                       const char **error);
/* A NUL-terminated copy of `size` bytes, or data NULL when out of memory. */
text_t text_copy(const char *data, size_t size);
/* Non-zero when `name` is a valid HTTP header name (an RFC 9110 token). */
int valid_header_name(const char *name, size_t size);
/* Non-zero when `value` can be sent as an HTTP header value (no CR, LF or NUL). */
int valid_header_value(const char *value, size_t size);

/*
 * What each example implements; runtime.c owns the proxy-wasm exports and calls
 * these with the state of the plugin (root context) a stream belongs to.
 */
extern const char EXAMPLE_NAME[];
/* Parses the plugin configuration into *state; returns 0 (and logs why) to reject it. */
int example_configure(const char *config, size_t size, void **state);
void example_free(void *state);
/* Handles a request's headers; returns ACTION_CONTINUE or ACTION_PAUSE. */
int32_t example_request_headers(void *state, uint32_t context_id);
/* The configured state of the plugin a stream or connection belongs to, or NULL. */
void *example_state_of(uint32_t context_id);

#endif
