"""A software prefetch for the compiled kernels: ``prefetch(array, index)`` asks the CPU to start
loading the cache line of ``array[index]`` and returns at once.

Written by hand because numba exposes no prefetch: it is a numba intrinsic that emits LLVM's
``llvm.prefetch`` (``prefetcht0`` on x86, ``prfm`` on ARM; a no-op where the target has none). It
never faults, so an index past the array's end is harmless, and it changes no result: kernels use
it only to overlap the DRAM misses of the data they will read next with the work on the data they
have (:mod:`indexer.engines.compact.impact_kernels`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

LINE = 64  # bytes in a cache line


@intrinsic
def _prefetch(typingctx: Any, array: Any, index: Any) -> Any:  # pragma: no cover - compiled
    if not isinstance(array, types.Array) or not isinstance(index, types.Integer):
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        pointer = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [pointer.type, i32, i32, i32]),
            "llvm.prefetch.p0",
        )  # fmt: skip
        read, keep_in_all_levels, data_cache = (ir.Constant(i32, v) for v in (0, 3, 1))
        builder.call(fn, [pointer, read, keep_in_all_levels, data_cache])
        return context.get_dummy_value()

    return types.void(array, index), codegen


# as kernels call it: prefetch(array, index); numba passes the typing context itself
prefetch = cast(Callable[[Any, Any], None], _prefetch)
