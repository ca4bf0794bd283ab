# CUDA backend tests (cuda helper), included from tests/CMakeLists.txt in every configuration.
# Label cuda: run with `ctest -L cuda` on a GPU host; without a device test_cuda exits 77
# (skipped) and test_backend skips its cuda cases.
if(XC_CUDA)
  add_executable(test_cuda ${XC_TEST_DIR}/unit/test_cuda.c)
  target_include_directories(test_cuda PRIVATE ${XC_TEST_DIR})
  target_compile_definitions(test_cuda PRIVATE XC_FIXTURE_DIR="${XC_FIXTURE_DIR}")
  target_link_libraries(test_cuda PRIVATE xc_worker xc_kernels xc_common PkgConfig::CMOCKA m)
  add_test(NAME cuda COMMAND test_cuda)
  set_tests_properties(cuda PROPERTIES LABELS cuda TIMEOUT 600 SKIP_RETURN_CODE 77)
  # test_backend runs every op on every compiled backend, cuda included
  set_tests_properties(backend PROPERTIES LABELS "unit;cuda")
endif()
