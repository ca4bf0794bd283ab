/* config.json parsing: the real 7b config, and every error path naming the key. */
#include "xc_model_config.h"

#include <string.h>

#include "xc_test.h"

/* The keys of the published internlm-xcomposer2-7b config.json (values from the HF page). */
static const char cfg_7b[] =
    "{\"architectures\":[\"InternLMXComposer2ForCausalLM\"],\"attn_implementation\":\"eager\","
    "\"bias\":false,\"bos_token_id\":1,\"eos_token_id\":2,\"hidden_act\":\"silu\","
    "\"hidden_size\":4096,\"img_size\":224,\"initializer_range\":0.02,"
    "\"intermediate_size\":14336,\"max_length\":4096,\"max_position_embeddings\":32768,"
    "\"model_type\":\"internlmxcomposer2\",\"num_attention_heads\":32,"
    "\"num_hidden_layers\":32,\"num_key_value_heads\":8,\"pad_token_id\":2,"
    "\"rms_norm_eps\":1e-05,\"rope_scaling\":{\"factor\":1.0,\"type\":\"dynamic\"},"
    "\"rope_theta\":1000000,\"tie_word_embeddings\":false,\"torch_dtype\":\"bfloat16\","
    "\"transformers_version\":\"4.33.1\",\"use_cache\":false,\"vocab_size\":92544}";

static void test_model_config_parses_7b(void **state) {
    (void)state;
    xc_model_config c;
    assert_int_equal(xc_model_config_parse(cfg_7b, strlen(cfg_7b), &c), XC_OK);
    assert_int_equal(c.hidden_size, 4096);
    assert_int_equal(c.num_key_value_heads, 8);
    assert_int_equal(c.head_dim, 128);
    assert_int_equal(c.vocab_size, 92544);
    assert_int_equal(c.img_size, 224);
    assert_int_equal(c.max_length, 4096);
    assert_true(c.rms_norm_eps == 1e-5f);
    assert_true(c.rope_theta == 1e6f);
    assert_string_equal(c.rope_scaling_type, "dynamic");
    assert_string_equal(c.architecture, "InternLMXComposer2ForCausalLM");
}

static void expect_error(const char *json, const char *needle) {
    xc_model_config c;
    xc_status st = xc_model_config_parse(json, strlen(json), &c);
    assert_true(st < 0);
    if (!strstr(xc_err_last(), needle)) {
        fail_msg("error '%s' does not mention '%s'", xc_err_last(), needle);
    }
}

static void test_model_config_rejects_bad_values(void **state) {
    (void)state;
    expect_error("{", "invalid JSON");
    expect_error("[]", "not an object");
    expect_error("{\"hidden_size\":64}", "intermediate_size");
    expect_error("{\"hidden_size\":\"64\",\"intermediate_size\":1}", "hidden_size");
    expect_error("{\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":2,"
                 "\"num_attention_heads\":3,\"vocab_size\":100}",
                 "num_attention_heads");
    expect_error("{\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":2,"
                 "\"num_attention_heads\":4,\"num_key_value_heads\":3,\"vocab_size\":100}",
                 "num_key_value_heads");
    expect_error("{\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":2,"
                 "\"num_attention_heads\":4,\"vocab_size\":100,\"tie_word_embeddings\":true}",
                 "tie_word_embeddings");
    expect_error("{\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":2,"
                 "\"num_attention_heads\":4,\"vocab_size\":100,\"rope_scaling\":"
                 "{\"type\":\"yarn\",\"factor\":2}}",
                 "yarn");
    expect_error("{\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":-1,"
                 "\"num_attention_heads\":4,\"vocab_size\":100}",
                 "num_hidden_layers");
}

static void test_model_config_missing_file(void **state) {
    (void)state;
    xc_model_config c;
    assert_int_equal(xc_model_config_load("/nonexistent/dir/config.json", &c), XC_ERR_IO);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_model_config_parses_7b),
        cmocka_unit_test(test_model_config_rejects_bad_values),
        cmocka_unit_test(test_model_config_missing_file),
    };
    return cmocka_run_group_tests(tests, xc_test_hooks_setup, xc_test_hooks_teardown);
}
