/**
 * C typedef aliases for FFI symbol tables (x86_64 Linux, LP64).
 *
 * @module
 */

/** `pid_t` */
export const pid_t = "i32" as const;
/** `int` */
export const int = "i32" as const;
/** `unsigned int` */
export const uint = "u32" as const;
/** `long` */
export const long = "i64" as const;
/** `unsigned long` */
export const ulong = "u64" as const;
/** `size_t` */
export const size_t = "usize" as const;
/** `ssize_t` */
export const ssize_t = "isize" as const;
/** `off_t` */
export const off_t = "i64" as const;
/** `void *` given as an address. */
export const ptr = "pointer" as const;
/** `void *` given as a JS buffer (passed without copying). */
export const buf = "buffer" as const;
