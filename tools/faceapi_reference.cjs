// face-api.js's own FaceExpressionNet, run by TensorFlow.js in Node, on raw face crops: the
// reference that tests/test_faceapi_network.py holds the PyTorch port to.
//
//   node tools/faceapi_reference.cjs PACKAGE_DIR CROPS.u8 N OUT.json
//
// PACKAGE_DIR: the unpacked `npm pack @vladmandic/face-api@1.7.15` (its dist/face-api.node-wasm.js
// and model/), with @tensorflow/tfjs@4.22.0 resolvable (NODE_PATH); the tfjs CPU backend is used.
// CROPS.u8: N crops of 112 x 112 RGB uint8, height-width-channel order, back to back.
// Writes {features (N, 256), logits (N, 7), probabilities (N, 7)} as face-api computes them:
// toNetInput -> FaceFeatureExtractor -> fc -> softmax. tools/make_faceapi_reference.py drives it.
const fs = require('fs');
const path = require('path');

async function main() {
  const [pkg, cropsPath, n, outPath] = process.argv.slice(2);
  const faceapi = require(path.resolve(pkg, 'dist', 'face-api.node-wasm.js'));
  const tf = faceapi.tf;
  await tf.setBackend('cpu');
  await tf.ready();
  const net = faceapi.nets.faceExpressionNet;
  await net.loadFromDisk(path.resolve(pkg, 'model'));
  const bytes = new Uint8Array(fs.readFileSync(cropsPath));
  const side = 112;
  const count = Number(n);
  if (bytes.length !== count * side * side * 3) throw new Error(`${cropsPath}: ${bytes.length} bytes, not ${count} crops of ${side}x${side}x3`);
  const out = { faceapi_version: faceapi.version, tfjs_version: tf.version_core, backend: tf.getBackend(),
                features: [], logits: [], probabilities: [] };
  for (let i = 0; i < count; i++) {
    const crop = tf.tensor3d(bytes.subarray(i * side * side * 3, (i + 1) * side * side * 3), [side, side, 3], 'int32');
    const input = await faceapi.toNetInput(crop);
    const features = net.faceFeatureExtractor.forwardInput(input);
    const logits = net.runNet(input);
    const probabilities = net.forwardInput(input);
    out.features.push(Array.from(features.dataSync()));
    out.logits.push(Array.from(logits.dataSync()));
    out.probabilities.push(Array.from(probabilities.dataSync()));
    tf.dispose([crop, features, logits, probabilities]);
  }
  fs.writeFileSync(outPath, JSON.stringify(out));
}

main().catch((err) => { console.error(err.message); process.exit(1); });
