# XC_CLUSTER=OFF (cuda helper): the tests of common, kernels and the model (worker) only, for
# hosts without ZeroMQ, protobuf-c, MPI or libmicrohttpd (scripts/gpu-check). Included from
# tests/CMakeLists.txt, which returns right after.
xc_add_test(common)
xc_add_test(model_config xc_worker)
xc_add_test(sampler xc_worker)
xc_add_test(kv xc_worker)
xc_add_test(llm xc_worker PkgConfig::CJSON)
xc_add_test(cpu_matmul xc_kernels)
xc_add_test(backend xc_kernels)
xc_add_test(ckpt xc_worker PkgConfig::CJSON)
xc_add_test(pickle xc_worker)
xc_add_test(ckpt_write xc_worker)
xc_add_test(tiny xc_worker)
xc_add_test(image xc_input PkgConfig::XC_IMG_PNG)
include(${XC_TEST_DIR}/cuda_tests.cmake)
