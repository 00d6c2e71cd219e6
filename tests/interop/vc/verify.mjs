// Independent checks of what datarooms produces, by libraries nobody here wrote:
// - a Verifiable Credential's eddsa-jcs-2022 Data Integrity proof, with Digital Bazaar's
//   jsonld-signatures + data-integrity + eddsa-jcs-2022-cryptosuite, its did:key resolved
//   with ed25519-multikey and an offline document loader (no network);
// - CIDs (CIDv1, sha2-256, raw / json codec) with the multiformats library.
//
// Input on stdin: {"credentials": [vc, ...], "cids": [{"base64": "...", "codec": "raw"}]}
// Output on stdout: {"credentials": [{"verified": bool, "error": str}], "cids": ["bafk..."]}
import {readFileSync} from 'node:fs';
import * as Ed25519Multikey from '@digitalbazaar/ed25519-multikey';
import {DataIntegrityProof} from '@digitalbazaar/data-integrity';
import {createVerifyCryptosuite} from '@digitalbazaar/eddsa-jcs-2022-cryptosuite';
import jsigs from 'jsonld-signatures';
import * as credentialsContext from '@digitalbazaar/credentials-context';
import * as multikeyContext from '@digitalbazaar/multikey-context';
import * as dataIntegrityContext from '@digitalbazaar/data-integrity-context';
import * as didContext from 'did-context';
import {CID} from 'multiformats/cid';
import * as raw from 'multiformats/codecs/raw';
import * as json from 'multiformats/codecs/json';
import {sha256} from 'multiformats/hashes/sha2';

const {purposes: {AssertionProofPurpose}} = jsigs;

const contexts = new Map([
  ...credentialsContext.contexts,
  ...multikeyContext.contexts,
  ...dataIntegrityContext.contexts,
  ...didContext.contexts,
]);

async function didKeyDocument(did) {
  const fingerprint = did.slice('did:key:'.length);
  const key = await Ed25519Multikey.from({
    '@context': multikeyContext.CONTEXT_URL,
    type: 'Multikey',
    controller: did,
    id: `${did}#${fingerprint}`,
    publicKeyMultibase: fingerprint,
  });
  const vm = await key.export({publicKey: true, includeContext: true});
  return {
    vm,
    doc: {
      '@context': [didContext.CONTEXT_URL, multikeyContext.CONTEXT_URL],
      id: did,
      verificationMethod: [{...vm, '@context': undefined}],
      assertionMethod: [vm.id],
      authentication: [vm.id],
    },
  };
}

async function documentLoader(url) {
  if(contexts.has(url)) {
    return {contextUrl: null, documentUrl: url, document: contexts.get(url)};
  }
  if(url.startsWith('did:key:')) {
    const [did, fragment] = url.split('#');
    const {vm, doc} = await didKeyDocument(did);
    const document = fragment ? vm : JSON.parse(JSON.stringify(doc));
    return {contextUrl: null, documentUrl: url, document};
  }
  throw new Error(`offline document loader: refusing to fetch ${url}`);
}

async function verifyCredential(credential) {
  const suite = new DataIntegrityProof({cryptosuite: createVerifyCryptosuite()});
  try {
    const result = await jsigs.verify(credential, {
      suite, purpose: new AssertionProofPurpose(), documentLoader,
    });
    const error = result.error ?
      (result.error.errors || [result.error]).map(e => e.message).join('; ') : '';
    return {verified: result.verified, error};
  } catch(e) {
    return {verified: false, error: String(e && e.message || e)};
  }
}

async function cidOf({base64, codec}) {
  const bytes = Buffer.from(base64, 'base64');
  const digest = await sha256.digest(bytes);
  return CID.create(1, codec === 'json' ? json.code : raw.code, digest).toString();
}

const input = JSON.parse(readFileSync(0, 'utf8'));
const out = {credentials: [], cids: []};
for(const vc of input.credentials || []) {
  out.credentials.push(await verifyCredential(vc));
}
for(const item of input.cids || []) {
  out.cids.push(await cidOf(item));
}
process.stdout.write(JSON.stringify(out) + '\n');
