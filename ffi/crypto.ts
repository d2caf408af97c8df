/**
 * The libcrypto symbol table (the system's OpenSSL 3, `libcrypto.so.3`) for AES-256-GCM and HMAC-SHA256,
 * loaded once on first use: `$CRYO_LIBCRYPTO` if set, else the soname. cryo seals image chunks with it when it
 * loads (AES-NI: gigabytes per second, in place, into cryo's own buffers), and computes an image's metadata MAC
 * with it piece by piece (an `EVP_MD_CTX` signing with an HMAC key); with WebCrypto otherwise
 * (lib/codecs/seal.ts, lib/codecs/hmac.ts).
 * The `_nb` variants run on a pool thread (`nonblocking`); every buffer they are given must stay referenced
 * until their promise settles, and a context is used by one call at a time.
 *
 * @module
 */

import { loadSystemLibrary } from "./_load.ts";
import { buf, int, ptr, size_t } from "./types.ts";

const symbols = {
  // EVP_CIPHER_CTX *EVP_CIPHER_CTX_new(void);
  EVP_CIPHER_CTX_new: { parameters: [], result: ptr },
  // void EVP_CIPHER_CTX_free(EVP_CIPHER_CTX *ctx);
  EVP_CIPHER_CTX_free: { parameters: [ptr], result: "void" },
  // const EVP_CIPHER *EVP_aes_256_gcm(void);
  EVP_aes_256_gcm: { parameters: [], result: ptr },
  // int EVP_CipherInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *type, ENGINE *impl, const unsigned char *key,
  //                       const unsigned char *iv, int enc);
  EVP_CipherInit_ex: { parameters: [ptr, ptr, ptr, buf, buf, int], result: int },
  // int EVP_CipherUpdate(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl, const unsigned char *in, int inl);
  EVP_CipherUpdate: { parameters: [ptr, ptr, buf, ptr, int], result: int },
  // (the same, given buffers, on the calling thread: `Deno.UnsafePointer.of()` per call kept garbage alive across
  // scavenges, and V8's young generation grew to 32 MiB over an image of one-page records)
  EVP_CipherUpdate_buf: { name: "EVP_CipherUpdate", parameters: [ptr, buf, buf, buf, int], result: int },
  // (the same, on a pool thread)
  EVP_CipherUpdate_nb: {
    name: "EVP_CipherUpdate",
    parameters: [ptr, ptr, buf, ptr, int],
    result: int,
    nonblocking: true,
  },
  // int EVP_CipherFinal_ex(EVP_CIPHER_CTX *ctx, unsigned char *outm, int *outl);
  EVP_CipherFinal_ex: { parameters: [ptr, buf, buf], result: int },
  // int EVP_CIPHER_CTX_ctrl(EVP_CIPHER_CTX *ctx, int type, int arg, void *ptr);
  EVP_CIPHER_CTX_ctrl: { parameters: [ptr, int, int, buf], result: int },
  // const EVP_MD *EVP_sha256(void);
  EVP_sha256: { parameters: [], result: ptr },
  // EVP_PKEY *EVP_PKEY_new_raw_private_key(int type, ENGINE *e, const unsigned char *key, size_t keylen);
  EVP_PKEY_new_raw_private_key: { parameters: [int, ptr, buf, size_t], result: ptr },
  // void EVP_PKEY_free(EVP_PKEY *pkey);
  EVP_PKEY_free: { parameters: [ptr], result: "void" },
  // EVP_MD_CTX *EVP_MD_CTX_new(void);
  EVP_MD_CTX_new: { parameters: [], result: ptr },
  // void EVP_MD_CTX_free(EVP_MD_CTX *ctx);
  EVP_MD_CTX_free: { parameters: [ptr], result: "void" },
  // int EVP_DigestSignInit(EVP_MD_CTX *ctx, EVP_PKEY_CTX **pctx, const EVP_MD *type, ENGINE *e, EVP_PKEY *pkey);
  EVP_DigestSignInit: { parameters: [ptr, ptr, ptr, ptr, ptr], result: int },
  // int EVP_DigestSignUpdate(EVP_MD_CTX *ctx, const void *d, size_t cnt);
  EVP_DigestSignUpdate: { parameters: [ptr, buf, size_t], result: int },
  // int EVP_DigestSignFinal(EVP_MD_CTX *ctx, unsigned char *sig, size_t *siglen);
  EVP_DigestSignFinal: { parameters: [ptr, buf, buf], result: int },
} as const satisfies Deno.ForeignLibraryInterface;

/** The libcrypto symbols cryo uses. */
export type CryptoSymbols = Deno.DynamicLibrary<typeof symbols>["symbols"];

/** `EVP_CTRL_GCM_GET_TAG`: copy the tag out after the final call (encrypting). */
export const EVP_CTRL_GCM_GET_TAG = 0x10;
/** `EVP_CTRL_GCM_SET_TAG`: give the expected tag before the final call (decrypting). */
export const EVP_CTRL_GCM_SET_TAG = 0x11;

/** `EVP_PKEY_HMAC` (`NID_hmac`): the key type of an HMAC key for `EVP_DigestSign*`. */
export const EVP_PKEY_HMAC = 855;

let loaded: CryptoSymbols | null | undefined;

/**
 * The libcrypto symbols, loading the library on first call; null when it cannot be loaded (the caller then uses
 * WebCrypto).
 *
 * @returns The symbols, or null.
 */
export function libcrypto(): CryptoSymbols | null {
  if (loaded === undefined) {
    try {
      loaded = loadSystemLibrary(
        "libcrypto.so.3",
        "CRYO_LIBCRYPTO",
        symbols,
        "Install it (Debian: apt-get install libssl3)",
      );
    } catch {
      loaded = null;
    }
  }
  return loaded;
}
