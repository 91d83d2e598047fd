'use strict'
// @vates/stream-reader is unavailable here: vhd-lib requires it only in vhdStreamValidator.js, which mergeVhdChain never loads.
throw new Error('@vates/stream-reader is not installed in the xo_merge harness (only vhd-lib merging is supported)')
