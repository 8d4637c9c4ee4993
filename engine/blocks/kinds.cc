// The block kinds, listed once: each lives in its own file of this folder.
#include "engine/blocks/block_kind.h"

namespace seqrec {

const BlockKindInfo& transformer_kind();  // transformer.cc: pre_ln, post_ln, sasrec_original
const BlockKindInfo& tisasrec_kind();     // tisasrec.cc
const BlockKindInfo& hstu_kind();         // hstu.cc

const BlockKindInfo& block_kind_info(BlockKind kind) {
  switch (kind) {
    case BlockKind::pre_ln:
    case BlockKind::post_ln:
    case BlockKind::sasrec_original: return transformer_kind();
    case BlockKind::tisasrec: return tisasrec_kind();
    case BlockKind::hstu: return hstu_kind();
  }
  return transformer_kind();  // unreachable: every kind is listed
}

}  // namespace seqrec
