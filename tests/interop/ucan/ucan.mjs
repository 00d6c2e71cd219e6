// An independent UCAN 1.0 implementation (iso-ucan) for tests/test_ucan_interop.py.
// Reads one JSON request on stdin, writes one JSON answer on stdout.
//   {"op": "mint", "seeds": {"bot": hex, "alice": hex, "agent": hex}, "cmd", "args", "policy"}
//     -> {"token": container, "dids": {...}}   (bot -> alice -> agent, agent invokes)
//   {"op": "verify", "token": container, "audience": did}
//     -> {"ok": true, "iss", "sub", "cmd", "args", "proofs"} or {"ok": false, "error"}
import * as cbor from '@ipld/dag-cbor'
import { Delegation } from 'iso-ucan/delegation'
import { Invocation } from 'iso-ucan/invocation'
import { EdDSASigner } from 'iso-signatures/signers/eddsa.js'
import { Resolver } from 'iso-signatures/verifiers/resolver.js'
import { verifier as eddsa } from 'iso-signatures/verifiers/eddsa.js'
import { DID } from 'iso-did'

const hex = (s) => Uint8Array.from(Buffer.from(s, 'hex'))
const b64url = (bytes) => Buffer.from(bytes).toString('base64url')
const container = (tokens) => 'C' + b64url(cbor.encode({ 'ctn-v1': tokens }))
const uncontainer = (text) => cbor.decode(Buffer.from(text.slice(1), 'base64url'))['ctn-v1']

async function mint(req) {
  const bot = await EdDSASigner.generate(hex(req.seeds.bot))
  const alice = await EdDSASigner.generate(hex(req.seeds.alice))
  const agent = await EdDSASigner.generate(hex(req.seeds.agent))
  const now = Math.floor(Date.now() / 1000)
  const root = await Delegation.create({
    iss: bot, aud: alice.did, sub: bot.did, cmd: '/datarooms', pol: [],
    exp: now + 3600, meta: req.meta ?? undefined,
  })
  const hop = await Delegation.create({
    iss: alice, aud: agent.did, sub: bot.did, cmd: req.cmd, pol: req.policy ?? [], exp: now + 600,
  })
  const verifierResolver = new Resolver(eddsa)
  const inv = await Invocation.create({
    iss: agent, sub: bot.did, cmd: req.cmd, args: req.args, prf: [root, hop],
    exp: now + 60, iat: now, verifierResolver,
  })
  return {
    token: container([inv.bytes, root.bytes, hop.bytes]),
    dids: { bot: bot.did, alice: alice.did, agent: agent.did },
    cids: { root: root.cid.toString(), hop: hop.cid.toString(), inv: inv.cid.toString() },
  }
}

async function verify(req) {
  const verifierResolver = new Resolver(eddsa)
  const tokens = uncontainer(req.token)
  const byCid = new Map()
  let invocationBytes = null
  for (const bytes of tokens) {
    const [, sigPayload] = cbor.decode(bytes)
    const tag = Object.keys(sigPayload).find((k) => k !== 'h')
    if (tag.startsWith('ucan/inv')) {
      invocationBytes = bytes
    } else {
      const d = await Delegation.from({ bytes, verifierResolver })
      byCid.set(d.cid.toString(), d)
    }
  }
  try {
    const audience = await DID.fromString(req.audience)
    const inv = await Invocation.from({
      bytes: invocationBytes, audience, verifierResolver,
      resolveProof: async (cid) => {
        const d = byCid.get(cid.toString())
        if (!d) throw new Error(`proof ${cid} not in the container`)
        return d
      },
    })
    return {
      ok: true, iss: inv.payload.iss, sub: inv.payload.sub, cmd: inv.payload.cmd,
      args: inv.payload.args, proofs: inv.delegations.map((d) => d.cid.toString()),
      cid: inv.cid.toString(),
    }
  } catch (error) {
    return { ok: false, error: String(error?.message ?? error) }
  }
}

let input = ''
for await (const chunk of process.stdin) input += chunk
const req = JSON.parse(input)
const out = req.op === 'mint' ? await mint(req) : await verify(req)
process.stdout.write(JSON.stringify(out) + '\n')
