// The C compiler and the flags every C file of native/ is built with: by the addon build
// (scripts/build-native.ts) and by the C tests (test/integration/native/). One list, so a test
// binary is compiled exactly as the code it tests is shipped (warnings are errors in both).

/** The compiler: $CC, else `cc`. */
export const CC = process.env['CC'] ?? 'cc';

/** C11 with GNU extensions (splice, SO_ORIGINAL_DST), threads, optimized, every warning an error. */
export const C_FLAGS: readonly string[] = Object.freeze(['-O2', '-Wall', '-Wextra', '-Werror', '-std=c11', '-D_GNU_SOURCE', '-pthread']);
