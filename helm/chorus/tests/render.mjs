// Renders the chart with the real helm (the pinned one tools.sh installs) and reads the objects
// back, as `helm install` would send them to the API server.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const CHART = path.resolve(HERE, '..');

/** The folder of helm, kubectl and kubernetes-validate (installed once by tools.sh). */
const TOOLS = execFileSync(path.join(HERE, 'tools.sh'), { encoding: 'utf8' }).trim();
export const HELM = path.join(TOOLS, 'helm');

/**
 * `helm template RELEASE CHART --namespace NAMESPACE -f values`: the release's objects, each a
 * plain object, with `find(kind, name)` to pick one.
 *
 * Without a cluster Helm keeps no release history, so `helm template` always renders revision 1.
 * For a later `revision` (an upgrade), the members ConfigMap, where the chart writes
 * `.Release.Revision`, gets that revision as `helm upgrade` would render it.
 */
export function helmTemplate({ release, namespace, values, revision = 1 }) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'chorus-values-'));
  try {
    const file = path.join(dir, 'values.yaml');
    writeFileSync(file, YAML.stringify(values));
    const text = execFileSync(
      HELM,
      ['template', release, CHART, '--namespace', namespace, '-f', file],
      { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const objects = YAML.parseAllDocuments(text)
      .map((doc) => doc.toJS())
      .filter((object) => object);
    for (const object of objects) {
      if (object.kind === 'ConfigMap' && object.data?.['members.toml']) {
        object.data['members.toml'] = object.data['members.toml'].replace(/^revision = 1$/m, `revision = ${revision}`);
      }
    }
    return {
      objects,
      find(kind, name) {
        const found = objects.find((o) => o.kind === kind && (!name || o.metadata.name === name));
        if (!found) throw new Error(`the chart rendered no ${kind} ${name ?? ''}`);
        return found;
      },
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
