/**
 * The byte layout of image format v1 (docs/FORMAT.md), in one import: constants and record types (format.ts),
 * the cursor and writer (cursor.ts), the header block (header.ts), the section table (sections.ts) and the
 * footer (footer.ts), over `DataView` with explicit little-endian (frames, their tables and the frame
 * directory: lib/image/frames.ts). Decoders check every length against the bytes they were given and throw
 * `ImageError` (lib/errors.ts) naming the file and offset.
 *
 * @module
 */

export * from "./format.ts";
export * from "./cursor.ts";
export * from "./header.ts";
export * from "./sections.ts";
export * from "./footer.ts";
