#pragma once
// Umbrella header: the mhsa operators (mhsa/ops.h) and the C++ frontend modules
// (MultiheadSelfAttention in mhsa/module.h, MultiheadAttention in mhsa/multihead_attention.h).
#include <mhsa/module.h>
#include <mhsa/multihead_attention.h>
#include <mhsa/ops.h>
#include <mhsa/version.h>
