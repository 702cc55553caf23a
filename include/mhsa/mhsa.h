#pragma once
// Umbrella header: the mhsa operators (mhsa/ops.h) and the C++ frontend module (mhsa/module.h).
#include <mhsa/module.h>
#include <mhsa/ops.h>
#include <mhsa/version.h>
