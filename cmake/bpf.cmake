# Builds a BPF object with clang and generates its libbpf skeleton with bpftool.
find_program(ES_CLANG NAMES clang clang-19 clang-16 clang-14 REQUIRED)
find_program(ES_BPFTOOL NAMES bpftool PATHS /usr/sbin /sbin REQUIRED)
execute_process(COMMAND ${CMAKE_C_COMPILER} -print-multiarch
  OUTPUT_VARIABLE ES_MULTIARCH OUTPUT_STRIP_TRAILING_WHITESPACE)
set(ES_BPF_GEN_DIR ${CMAKE_BINARY_DIR}/gen)
file(MAKE_DIRECTORY ${ES_BPF_GEN_DIR})

function(envsteer_bpf_object name src)
  file(GLOB_RECURSE deps CONFIGURE_DEPENDS
    ${CMAKE_SOURCE_DIR}/bpf/*.h ${CMAKE_SOURCE_DIR}/maps/abi.h)
  set(obj ${ES_BPF_GEN_DIR}/${name}.bpf.o)
  set(skel ${ES_BPF_GEN_DIR}/${name}.skel.h)
  add_custom_command(
    OUTPUT ${obj}
    COMMAND ${ES_CLANG} -O2 -g -target bpf -D__bpf__ -Wall -Werror
            -I/usr/include/${ES_MULTIARCH} -I${CMAKE_SOURCE_DIR}
            -c ${src} -o ${obj}
    DEPENDS ${src} ${deps}
    COMMENT "BPF ${name}.bpf.o")
  add_custom_command(
    OUTPUT ${skel}
    COMMAND ${ES_BPFTOOL} gen skeleton ${obj} name ${name}_bpf > ${skel}
    DEPENDS ${obj}
    COMMENT "skeleton ${name}.skel.h")
  add_custom_target(${name}_skel DEPENDS ${skel})
endfunction()
