# CUDA backend tests (cuda helper), included from tests/CMakeLists.txt in every configuration.
# Label cuda: run with `ctest -L cuda` on a GPU host (scripts/gpu-check). Without a device both
# tests exit 77, which ctest reports as skipped; with XC_REQUIRE_CUDA=1 in the environment every
# case fails instead, naming the reason the backend could not open. Both set XC_CUDA_DEBUG=1
# (device-pointer checks, a sync after every op) unless the environment sets it.
if(XC_CUDA)
  add_executable(test_cuda ${XC_TEST_DIR}/unit/test_cuda.c)
  target_include_directories(test_cuda PRIVATE ${XC_TEST_DIR})
  target_compile_definitions(test_cuda PRIVATE XC_FIXTURE_DIR="${XC_FIXTURE_DIR}")
  target_link_libraries(test_cuda PRIVATE xc_worker xc_kernels xc_common PkgConfig::CMOCKA m)
  add_test(NAME cuda COMMAND test_cuda)
  set_tests_properties(cuda PROPERTIES LABELS cuda TIMEOUT 300 SKIP_RETURN_CODE 77)
  # test_backend runs every op on every compiled backend: the CPU ones as `backend` (unit), the
  # CUDA one as `backend_cuda`
  set_tests_properties(backend PROPERTIES ENVIRONMENT XC_TEST_BACKEND=cpu)
  add_test(NAME backend_cuda COMMAND test_backend)
  set_tests_properties(backend_cuda PROPERTIES LABELS cuda TIMEOUT 300 SKIP_RETURN_CODE 77
                                               ENVIRONMENT XC_TEST_BACKEND=cuda)
endif()
