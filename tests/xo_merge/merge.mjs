// Merge a VHD chain the way Xen Orchestra's retention does, with Xen Orchestra's own code (vhd-lib mergeVhdChain).
//
// usage: node merge.mjs <folder> <parent.vhd> <child.vhd> [<newer child.vhd> ...]
// The files are names inside <folder> (a VDI folder of a repository), oldest first. As XO does
// (@xen-orchestra/backup-archive RemoteDiskLineage #mergeChain -> MergeRemoteDisk, and vhd-lib merge.js
// Merger): the children's blocks are written into the parent, the parent takes the newest child's
// unique id and size and is renamed to the newest child's name, and the other children are removed.
// Prints a JSON line: {"mergedDataSize": ..., "finalVhdSize": ...}.
import { getHandler } from '@xen-orchestra/fs'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const { mergeVhdChain } = require('vhd-lib/merge.js')

const [folder, ...chain] = process.argv.slice(2)
if (folder === undefined || chain.length < 2) {
  console.error('usage: node merge.mjs <folder> <parent.vhd> <child.vhd> [<newer child.vhd> ...]')
  process.exit(2)
}

const handler = getHandler({ url: 'file://' + folder })
await handler.sync()
try {
  const result = await mergeVhdChain(handler, chain, { removeUnused: true })
  console.log(JSON.stringify(result))
} finally {
  await handler.forget()
}
