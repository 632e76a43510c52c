/* Native parts of selection._row_ranks_host: stable ranks within the rows of a uint32 matrix.
 *
 * A row's ranks are those of a stable argsort of its keys: the patterns as given (order-preserving ones),
 * or with `magnitude` the magnitudes of float32 patterns (sign bit cleared; every NaN one key above +inf).
 * For rows of up to 2^12 entries the sort itself is NumPy's (its vectorized sort of 32-bit keys is the
 * fastest there is here); the passes around it are fused here:
 *
 *   keys(bits, keys, flags, n, magnitude): each entry's 32-bit key, the pattern's bits 29 .. c - 2 above
 *     its c column bits (distinct within a row, so an unstable sort of them is the stable argsort where
 *     the kept bits order the row), and per row a flag: some entry has a dropped bit set.
 *   ranks(bits, keys, flags, out, n, magnitude): after NumPy sorted each row of `keys`, a flagged row
 *     is checked (its (full key, column) pairs in sorted order must increase) and, where they do not,
 *     ranked by rank_rows' radix sort; then each sorted column gets its position.
 *   rank_rows(bits, out, n, magnitude, start, stop): rows [start, stop) ranked by an LSD radix sort on the
 *     full keys (four stable 8-bit passes; a digit that is the same for the whole row is skipped), for
 *     rows too long for 32-bit keys.
 *
 * `out` has 2-byte items (uint16: rows of at most 2^16 entries) or 4-byte ones (int32). Rows are
 * independent: Python threads call these on disjoint rows, the GIL released.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NAN_KEY 0x7F800001u
#define MAX_KEY32_COLUMN_BITS 12

static inline uint32_t full_key(uint32_t v, int magnitude) {
  if (magnitude) {
    v &= 0x7FFFFFFFu;
    if (v > 0x7F800000u) v = NAN_KEY;
  }
  return v;
}

static unsigned column_bits(Py_ssize_t n) {
  unsigned c = 0;
  while (((Py_ssize_t)1 << c) < n) c++;
  return c < 2 ? 2 : c;
}

static inline void put_rank(void *out, int out_u16, Py_ssize_t at, Py_ssize_t r) {
  if (out_u16)
    ((uint16_t *)out)[at] = (uint16_t)r;
  else
    ((int32_t *)out)[at] = (int32_t)r;
}

/* One row's ranks by an LSD radix sort of (key, column) pairs; `work` holds 4 n uint32. */
static void radix_rank_row(const uint32_t *src, Py_ssize_t n, int magnitude, uint32_t *work, void *out,
                           int out_u16) {
  uint32_t *keys = work, *cols = work + n, *keys2 = work + 2 * n, *cols2 = work + 3 * n;
  uint32_t counts[4][256];
  memset(counts, 0, sizeof counts);
  for (Py_ssize_t i = 0; i < n; i++) {
    uint32_t k = full_key(src[i], magnitude);
    keys[i] = k;
    cols[i] = (uint32_t)i;
    counts[0][k & 0xFF]++;
    counts[1][(k >> 8) & 0xFF]++;
    counts[2][(k >> 16) & 0xFF]++;
    counts[3][k >> 24]++;
  }
  for (int pass = 0; pass < 4; pass++) {
    int shift = 8 * pass;
    uint32_t *count = counts[pass];
    if (count[(keys[0] >> shift) & 0xFF] == (uint32_t)n) continue; /* one digit for the whole row */
    uint32_t sum = 0;
    for (int d = 0; d < 256; d++) {
      uint32_t c = count[d];
      count[d] = sum;
      sum += c;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
      uint32_t k = keys[i];
      uint32_t at = count[(k >> shift) & 0xFF]++;
      keys2[at] = k;
      cols2[at] = cols[i];
    }
    uint32_t *t = keys;
    keys = keys2;
    keys2 = t;
    t = cols;
    cols = cols2;
    cols2 = t;
  }
  for (Py_ssize_t r = 0; r < n; r++) put_rank(out, out_u16, cols[r], r);
}

/* The buffers' row count, or -1 (an exception set) where their sizes do not fit rows of n entries. */
static Py_ssize_t check_rows(Py_buffer *bits, Py_buffer *out, Py_ssize_t n, int *out_u16) {
  Py_ssize_t rows = n > 0 ? bits->len / (4 * n) : 0;
  *out_u16 = out != NULL && out->len == rows * n * 2;
  if (n <= 0 || n > 0x7FFFFFFF || bits->len != rows * n * 4 ||
      (out != NULL && !*out_u16 && out->len != rows * n * 4) || (*out_u16 && n > 65536)) {
    PyErr_SetString(PyExc_ValueError, "_row_ranks: buffer sizes do not fit rows of n entries");
    return -1;
  }
  return rows;
}

static PyObject *py_keys(PyObject *self, PyObject *args) {
  Py_buffer bits, keys, flags;
  Py_ssize_t n;
  int magnitude;
  (void)self;
  if (!PyArg_ParseTuple(args, "y*w*w*np", &bits, &keys, &flags, &n, &magnitude)) return NULL;
  PyObject *result = NULL;
  int unused;
  Py_ssize_t rows = check_rows(&bits, NULL, n, &unused);
  unsigned c = column_bits(n);
  if (rows < 0) goto done;
  if (keys.len != bits.len || flags.len != rows || c > MAX_KEY32_COLUMN_BITS) {
    PyErr_SetString(PyExc_ValueError, "_row_ranks.keys: keys or flags do not fit the rows");
    goto done;
  }
  Py_BEGIN_ALLOW_THREADS
  const uint32_t *b = (const uint32_t *)bits.buf;
  uint32_t *k = (uint32_t *)keys.buf;
  uint8_t *f = (uint8_t *)flags.buf;
  unsigned drop = c - 2;
  /* Exact entries: in [0, 2) with the dropped bits clear (magnitudes: bit 30 clear; order-preserving
   * patterns of non-negative values below 2: bit 31 set, bit 30 clear). */
  uint32_t low = ((uint32_t)1 << drop) - 1;
  uint32_t exact_mask = (magnitude ? 0x40000000u : 0xC0000000u) | low;
  uint32_t flip = magnitude ? 0u : 0x80000000u;
  for (Py_ssize_t r = 0; r < rows; r++) {
    const uint32_t *br = b + r * n;
    uint32_t *kr = k + r * n;
    uint32_t any = 0;
    for (Py_ssize_t j = 0; j < n; j++) {
      uint32_t v = br[j];
      kr[j] = ((v >> drop) << c) | (uint32_t)j;
      any |= (v ^ flip) & exact_mask;
    }
    f[r] = any != 0;
  }
  Py_END_ALLOW_THREADS
  Py_INCREF(Py_None);
  result = Py_None;
done:
  PyBuffer_Release(&bits);
  PyBuffer_Release(&keys);
  PyBuffer_Release(&flags);
  return result;
}

static PyObject *py_ranks(PyObject *self, PyObject *args) {
  Py_buffer bits, keys, flags, out;
  Py_ssize_t n;
  int magnitude;
  (void)self;
  if (!PyArg_ParseTuple(args, "y*y*y*w*np", &bits, &keys, &flags, &out, &n, &magnitude)) return NULL;
  PyObject *result = NULL;
  int out_u16;
  Py_ssize_t rows = check_rows(&bits, &out, n, &out_u16);
  unsigned c = column_bits(n);
  uint32_t *work = NULL;
  if (rows < 0) goto done;
  if (keys.len != bits.len || flags.len != rows || c > MAX_KEY32_COLUMN_BITS) {
    PyErr_SetString(PyExc_ValueError, "_row_ranks.ranks: keys or flags do not fit the rows");
    goto done;
  }
  work = (uint32_t *)malloc(sizeof(uint32_t) * 4 * (size_t)n);
  if (work == NULL) {
    PyErr_NoMemory();
    goto done;
  }
  Py_BEGIN_ALLOW_THREADS
  const uint32_t *b = (const uint32_t *)bits.buf;
  const uint32_t *k = (const uint32_t *)keys.buf;
  const uint8_t *f = (const uint8_t *)flags.buf;
  uint32_t col_mask = ((uint32_t)1 << c) - 1;
  size_t item = out_u16 ? 2 : 4;
  for (Py_ssize_t r = 0; r < rows; r++) {
    const uint32_t *br = b + r * n;
    const uint32_t *kr = k + r * n;
    char *outr = (char *)out.buf + (size_t)r * (size_t)n * item;
    if (f[r]) { /* (full key, column) must increase: NaNs of other payloads are equal keys */
      uint64_t prev = 0;
      Py_ssize_t j = 0;
      for (; j < n; j++) {
        uint32_t col = kr[j] & col_mask;
        uint64_t v = ((uint64_t)full_key(br[col], magnitude) << 32) | col;
        if (v < prev) break;
        prev = v;
      }
      if (j < n) {
        radix_rank_row(br, n, magnitude, work, outr, out_u16);
        continue;
      }
    }
    if (out_u16) {
      uint16_t *o = (uint16_t *)outr;
      for (Py_ssize_t j = 0; j < n; j++) o[kr[j] & col_mask] = (uint16_t)j;
    } else {
      int32_t *o = (int32_t *)outr;
      for (Py_ssize_t j = 0; j < n; j++) o[kr[j] & col_mask] = (int32_t)j;
    }
  }
  Py_END_ALLOW_THREADS
  Py_INCREF(Py_None);
  result = Py_None;
done:
  free(work);
  PyBuffer_Release(&bits);
  PyBuffer_Release(&keys);
  PyBuffer_Release(&flags);
  PyBuffer_Release(&out);
  return result;
}

static PyObject *py_rank_rows(PyObject *self, PyObject *args) {
  Py_buffer bits, out;
  Py_ssize_t n;
  int magnitude;
  (void)self;
  if (!PyArg_ParseTuple(args, "y*w*np", &bits, &out, &n, &magnitude)) return NULL;
  PyObject *result = NULL;
  int out_u16;
  uint32_t *work = NULL;
  Py_ssize_t rows = check_rows(&bits, &out, n, &out_u16);
  if (rows < 0) goto done;
  work = (uint32_t *)malloc(sizeof(uint32_t) * 4 * (size_t)n);
  if (work == NULL) {
    PyErr_NoMemory();
    goto done;
  }
  Py_BEGIN_ALLOW_THREADS
  size_t row_bytes = (size_t)n * (out_u16 ? 2 : 4);
  for (Py_ssize_t r = 0; r < rows; r++)
    radix_rank_row((const uint32_t *)bits.buf + r * n, n, magnitude, work, (char *)out.buf + r * row_bytes,
                   out_u16);
  Py_END_ALLOW_THREADS
  Py_INCREF(Py_None);
  result = Py_None;
done:
  free(work);
  PyBuffer_Release(&bits);
  PyBuffer_Release(&out);
  return result;
}

static PyMethodDef methods[] = {
    {"keys", py_keys, METH_VARARGS, "keys(bits, keys, flags, n, magnitude): 32-bit sort keys and per-row flags."},
    {"ranks", py_ranks, METH_VARARGS,
     "ranks(bits, sorted_keys, flags, out, n, magnitude): ranks from the rows' sorted keys."},
    {"rank_rows", py_rank_rows, METH_VARARGS, "rank_rows(bits, out, n, magnitude): ranks by a radix sort."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_row_ranks",
                                    "Native parts of mergejax.methods.selection's row ranks.", -1, methods};

PyMODINIT_FUNC PyInit__row_ranks(void) { return PyModule_Create(&module); }
