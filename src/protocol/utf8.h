// UTF-8 validation of event data and names. Pure C++.
#pragma once

#include <string_view>

namespace sse {

// Well-formed UTF-8 per RFC 3629: no overlongs, no surrogates, nothing above U+10FFFF.
bool is_valid_utf8(std::string_view text) noexcept;

}  // namespace sse
