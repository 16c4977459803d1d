"""Zarr v3 array-to-bytes codecs for small integers, over the entropy coders of imagecodecs or pcodec.

Quantised sky-noise stamps are small integers with a near-Gaussian spread; two coders suit them:

* ``lensdask.pcodec`` (the default): Pcodec (pco), a coder for numerical sequences that gets
  near their entropy. On the mock survey at the default step: 4.5 KiB per 4-band 45x45 cutout,
  decoded in ~16 us. Its stream is pco's standalone format, the one the ``pcodec`` package and
  numcodecs' ``PCodec`` read too.
* ``lensdask.rice``: Rice coding, fpack's RCOMP: it codes the difference between neighbouring
  pixels with a code length adapted every ``nblock`` pixels. 4.6 KiB per cutout, decoded in ~40 us.

Neither zarr 3.1 nor numcodecs' Zarr v3 wrappers offer a Rice coder (imagecodecs' ``Rcomp`` is a
Zarr v2 codec), and numcodecs' ``PCodec`` needs another package and warns on every use that it is
not in the Zarr v3 specification, so both are wrapped here, in a few lines each. A chunk (rows x
bands x stamp x stamp, C order) is coded as one stream.

The codecs are registered with zarr when this module is imported (:mod:`lensdask.store` imports
it), and through the ``zarr.codecs`` entry point for other readers with lensdask installed.

Each coder's package is imported when a chunk is first coded, not when this module is, so that an
installation without it still reads and writes stores of the other coder. Pcodec is read and written
through ``imagecodecs`` where it is installed, else through the small ``pcodec`` package (its
streams are the same format: either reads what the other wrote). That is what lets the GPU kit
(``benchmarks/gpu_kit.py``) leave out imagecodecs, whose 26 MB wheel does not fit: only Rice then
needs it, and asking for Rice without it is a :class:`~lensdask.errors.LensdaskError` that says so.
"""

from __future__ import annotations

import abc
import asyncio
from dataclasses import dataclass

import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.buffer import Buffer, NDBuffer
from zarr.core.common import parse_named_configuration
from zarr.registry import register_codec

from .errors import LensdaskError

CODEC_NAME = "lensdask.rice"
PCODEC_NAME = "lensdask.pcodec"


def _imagecodecs(codec: str):
    """The imagecodecs module, or a :class:`LensdaskError` naming the codec that needs it."""
    try:
        import imagecodecs
    except ImportError as exc:
        raise LensdaskError(
            f"the {codec} codec needs the imagecodecs package, which is not installed: pip install imagecodecs "
            "(or write new stores with store.quantise.codec: pcodec, which also works with the pcodec package)"
        ) from exc
    return imagecodecs


def pcodec_backend():
    """What codes Pcodec streams here: the imagecodecs module, else the pcodec module.

    imagecodecs comes first because the full installation has it (its encoder wrote the
    stores made so far, byte for byte); pcodec is the light fallback (about 0.6 MB).

    Raises
    ------
    LensdaskError
        Neither is installed.
    """
    try:
        import imagecodecs

        return imagecodecs
    except ImportError:
        pass
    try:
        import pcodec
    except ImportError as exc:
        raise LensdaskError(
            f"the {PCODEC_NAME} codec needs the pcodec package (or imagecodecs), and neither is installed: "
            "pip install pcodec"
        ) from exc
    return pcodec


class _Int32EntropyCodec(ArrayBytesCodec, abc.ABC):
    """What both coders share: int32 chunks only, one option, coding off the event loop.

    A subclass names itself (``codec_name``), its one integer option (``option``) and
    codes a C-ordered int32 chunk in :meth:`encode_array` / :meth:`decode_array`.
    """

    is_fixed_size = False
    codec_name: str = ""
    option: str = ""

    @classmethod
    def from_dict(cls, data):
        _, conf = parse_named_configuration(data, cls.codec_name, require_configuration=False)
        return cls(**(conf or {}))

    def to_dict(self):
        return {"name": self.codec_name, "configuration": {self.option: getattr(self, self.option)}}

    def validate(self, *, shape, dtype, chunk_grid) -> None:
        native = dtype.to_native_dtype()
        if np.dtype(native) != np.dtype("int32"):
            raise TypeError(f"{self.codec_name} codes int32 arrays, not {native}")

    @abc.abstractmethod
    def encode_array(self, arr: np.ndarray) -> bytes | bytearray:
        """The coded bytes of a C-ordered int32 chunk (each coder's own)."""

    @abc.abstractmethod
    def decode_array(self, data: np.ndarray, shape: tuple) -> np.ndarray:
        """The int32 chunk of ``shape`` that ``data`` (uint8 bytes) codes (each coder's own)."""

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec) -> NDBuffer:
        shape = tuple(chunk_spec.shape)
        arr = self.decode_array(chunk_bytes.as_numpy_array(), shape)
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(np.asarray(arr).reshape(shape))

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec) -> NDBuffer:
        # as zarr's Blosc: chunks in parallel
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec) -> Buffer | None:
        arr = np.ascontiguousarray(chunk_array.as_numpy_array(), dtype=np.int32)
        return chunk_spec.prototype.buffer.from_bytes(self.encode_array(arr))

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec) -> Buffer | None:
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, _chunk_spec) -> int:
        # the coded size depends on the data; zarr's own Blosc and Zstd codecs answer the same way
        raise NotImplementedError(f"{self.codec_name} output has no fixed size")


@dataclass(frozen=True)
class RiceCodec(_Int32EntropyCodec):
    """Rice coding of int32 chunks.

    Parameters
    ----------
    nblock : int
        Pixels per block sharing one code length (fpack's default is 32).
    """

    codec_name = CODEC_NAME
    option = "nblock"
    nblock: int = 32

    def __init__(self, *, nblock: int = 32) -> None:
        nblock = int(nblock)
        if nblock < 1:
            raise ValueError(f"{CODEC_NAME}: nblock must be >= 1, got {nblock}")
        object.__setattr__(self, "nblock", nblock)

    def encode_array(self, arr: np.ndarray) -> bytes | bytearray:
        return _imagecodecs(CODEC_NAME).rcomp_encode(arr, nblock=self.nblock)

    def decode_array(self, data: np.ndarray, shape: tuple) -> np.ndarray:
        # imagecodecs reads any buffer (here the chunk's uint8 array)
        return _imagecodecs(CODEC_NAME).rcomp_decode(data, shape=shape, dtype=np.int32, nblock=self.nblock)


@dataclass(frozen=True)
class PcodecCodec(_Int32EntropyCodec):
    """Pcodec (pco) coding of int32 chunks.

    Parameters
    ----------
    level : int
        Compression level, 0-12 (pco's default 8: more is slower to write, not to read).
    """

    codec_name = PCODEC_NAME
    option = "level"
    level: int = 8

    def __init__(self, *, level: int = 8) -> None:
        level = int(level)
        if not 0 <= level <= 12:
            raise ValueError(f"{PCODEC_NAME}: level must be in 0..12, got {level}")
        object.__setattr__(self, "level", level)

    def encode_array(self, arr: np.ndarray) -> bytes | bytearray:
        lib = pcodec_backend()
        if lib.__name__ == "imagecodecs":
            return lib.pcodec_encode(arr, level=self.level)
        return lib.standalone.simple_compress(arr.ravel(), lib.ChunkConfig(compression_level=self.level))

    def decode_array(self, data: np.ndarray, shape: tuple) -> np.ndarray:
        lib = pcodec_backend()
        if lib.__name__ == "imagecodecs":
            # imagecodecs reads any buffer (here the chunk's uint8 array)
            return lib.pcodec_decode(data, shape=shape, dtype=np.int32)
        out = np.empty(shape, dtype=np.int32)
        if out.size:  # pcodec decodes an empty stream to None, not to an empty array
            done = lib.standalone.simple_decompress_into(data.tobytes(), out.reshape(-1))
            if done.n_processed != out.size:  # a short stream would leave the rest of ``out`` unset
                raise ValueError(f"{PCODEC_NAME}: chunk holds {done.n_processed} values, expected {out.size}")
        return out


register_codec(CODEC_NAME, RiceCodec)
register_codec(PCODEC_NAME, PcodecCodec)

CODECS: dict[str, type[_Int32EntropyCodec]] = {"pcodec": PcodecCodec, "rice": RiceCodec}
"""Integer codecs a quantised store may use (config ``store.quantise.codec``)."""
