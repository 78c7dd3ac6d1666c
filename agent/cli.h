// SPDX-License-Identifier: Apache-2.0
#pragma once

namespace envsteer {
// The `envsteer` command line; returns the exit code.
int cli_main(int argc, char** argv);
}
