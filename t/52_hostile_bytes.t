# Hostile bytes from clients: CR, LF, NUL, ESC, ", \ and invalid UTF-8 sent through every input
# (query arguments of stream, publish, clients and stats locations, the Last-Event-ID, X-SSE-Event,
# sse_user and per-key limit headers, publish targets, sse_clients filters). Whatever comes in:
#   - every JSON body parses, as UTF-8 (invalid UTF-8 shows as U+FFFD);
#   - every text/plain body is exactly one line;
#   - error.log holds no control byte, every line of it is one log line (date, time, [level]);
#   - a client's bytes are shown in double quotes, escaped: 0x20-0x7E as they are except " -> \"
#     and \ -> \\, any other byte as \xHH (uppercase), at most 128 input bytes then "...".
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP;
use SSETest;

my $t = SSETest->new(server => <<'CONF')->start;
        sse_heartbeat off;
        location = /events {
            sse_subscribe $arg_topics;
            sse_event_filter $arg_types;
            sse_user $http_x_user;
            sse_client_channel on;
            sse_connected_event connected;
        }
        location = /keyed {
            sse_subscribe $arg_topics;
            sse_max_subscribers_per_key $http_x_key 1;
        }
        location = /pub {
            sse_publish $arg_topic;
        }
        location = /to-user {
            sse_publish_user $arg_user;
        }
        location = /to-client {
            sse_publish_client $arg_id;
        }
        location = /clients {
            sse_clients;
        }
        location = /stats {
            sse_stats;
        }
CONF

END { local $?; $t->stop if $t }

# The issue's example puts "[alert]" into the refusal line (escaped, at info): that one line is
# expected. The raw form (a line starting with INJECTED) is not allowed by this.
$t->allow_log(qr{^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[info\] .*"x\\x0AINJECTED \[alert\] line"});

my $JSON = JSON::PP->new->utf8;
my $CTRL = qr/[\x00-\x08\x0B-\x1F\x7F]/;

# The escaping of the contract, to build what a refusal must show.
sub esc {
    my ($bytes) = @_;
    my $cut = length($bytes) > 128;
    my $out = join '', map {
        my $o = ord;
        $_ eq '"' ? '\\"' : $_ eq '\\' ? '\\\\' : ($o >= 0x20 && $o <= 0x7E) ? $_ : sprintf('\\x%02X', $o)
    } split //, substr($bytes, 0, 128);
    return '"' . $out . ($cut ? '...' : '') . '"';
}

sub show { my $s = shift // ''; $s =~ s/([^\x20-\x7E])/sprintf '\\x%02X', ord $1/ge; return $s }

# Every answer: a JSON body parses, a text/plain body is one line of printable bytes.
sub check_body {
    my ($label, $r) = @_;
    my $type = $r->{headers}{'content-type'} // '';
    if ($type =~ m{^application/json}) {
        my $v = eval { $JSON->decode($r->{body}) };
        ok(defined $v, "$label: the JSON body parses") or diag("$@ body: " . show($r->{body}));
        return $v;
    }
    if ($type =~ m{^text/plain}) {
        ok($r->{body} =~ /\A[^\n]+\n\z/ && $r->{body} !~ $CTRL, "$label: the text/plain body is one line")
            or diag('body: ' . show($r->{body}));
        return;
    }
    return;
}

# One request (a stream opened by mistake must not hold the test: 3 s at most).
sub req {
    my ($label, $method, $path, %o) = @_;
    my $r = $t->request($method, $path, timeout => 3, %o);
    check_body($label, $r);
    return $r;
}

# A refusal: its status, a one-line body showing $bytes escaped, and a log line showing them too.
sub refused {
    my ($label, $status, $method, $path, $bytes, %o) = @_;
    my $r = req($label, $method, $path, %o);
    is($r->{status}, $status, "$label: $status");
    my $want = esc($bytes);
    ok(index($r->{body}, $want) >= 0, "$label: the reason shows the value escaped, $want")
        or diag('body: ' . show($r->{body}));
    my @lines = grep { index($_, $want) >= 0 } split /\n/, $t->error_log;
    ok(@lines == 1 && $lines[0] =~ /\[info\] .*sse: /, "$label: one [info] log line shows it escaped")
        or diag(scalar(@lines) . ' lines show it; the log ends with: ' . show(substr($t->error_log, -600)));
    return $r;
}

# Frames of a stream, by name: {connected => [data...], reset => [...]}.
sub event_data {
    my ($s, $name) = @_;
    return map { $_->{data} } grep { ($_->{event} // '') eq $name } $s->events;
}

# --- the issue's example: an event type pattern with a line break ---------------------------------
refused('types=x\nINJECTED [alert] line', 400, 'GET', '/events?topics=a&types=x%0AINJECTED%20[alert]%20line',
        "x\nINJECTED [alert] line");
refused('types with CR ESC " \ and invalid UTF-8', 400, 'GET', '/events?topics=a&types=%0D%1B%22%5C%FF%C3',
        "\r\x1b\"\\\xff\xc3");
refused('types with NUL and LF', 400, 'GET', '/events?topics=a&types=a%00b%0A', "a\x00b\n");

# --- channel names ------------------------------------------------------------------------------
refused('topics with LF', 400, 'GET', '/events?topics=a%0Ab', "a\nb");
refused('topics with ESC " \ invalid UTF-8 NUL', 400, 'GET', '/events?topics=%1B%22%5C%FF%C3%00',
        "\x1b\"\\\xff\xc3\x00");
{
    my $r = req('a 200-byte channel name of LFs', 'GET', '/events?topics=' . ('%0A' x 200));
    is($r->{status}, 400, 'a 200-byte channel name of LFs: 400');
    like($r->{body}, qr/"(?:\\x0A){1,128}"\.\.\./, 'a long value is cut: at most 128 bytes shown, then ...')
        or diag('body: ' . show($r->{body}));
}
refused('publish topic with LF ESC', 400, 'POST', '/pub?topic=a%0A%1B', "a\n\x1b", body => 'x');
refused('GET on the publish location, topic with invalid UTF-8 "', 400, 'GET', '/pub?topic=%FF%22', "\xff\"");
refused('DELETE on the publish location, topic with \ NUL', 400, 'DELETE', '/pub?topic=%5C%00z', "\\\x00z");
{
    my $r = req('sse_stats channels= with LF ESC', 'GET', '/stats?channels=s%0A%1B');
    is($r->{status}, 400, 'sse_stats channels= with LF ESC: 400');
    ok(index($r->{body}, esc("s\n\x1b")) >= 0, 'sse_stats: the reason shows the name escaped')
        or diag('body: ' . show($r->{body}));
}

# --- event names --------------------------------------------------------------------------------
for my $case (['event=%1B%22%5C%0D', {}], ['event=%FF%C3', {}], ['event=a%00%0A', {}],
              ['event=x', {'X-SSE-Event' => "\x1b\"\\\xff\xc3"}]) {
    my ($arg, $h) = @$case;
    my $label = "publish with $arg" . (%$h ? ' and X-SSE-Event: ' . show($h->{'X-SSE-Event'}) : '');
    my $r = req($label, 'POST', "/pub?topic=ev&$arg", body => 'data', headers => $h);
    is($r->{status}, 400, "$label: 400");
}
{
    # Allowed bytes in an event name (no line break, valid UTF-8): published, the reply is JSON.
    my $r = req('publish with event=ESC " \\', 'POST', '/pub?topic=ev&event=%1B%22%5C', body => 'data');
    is($r->{status}, 202, 'publish with event=ESC " \\: 202');
    $r = req('GET on the publish location', 'GET', '/pub?topic=ev');
    is($r->{status}, 200, 'GET on the publish location: 200');
    $r = req('publish invalid UTF-8 data', 'POST', '/pub?topic=ev', body => "\xff\xc3\x1b\"\\");
    is($r->{status}, 400, 'publish invalid UTF-8 data: 400');
}

# --- Last-Event-ID: the reset event is JSON, the log line escapes ----------------------------------
{
    my $s = $t->subscribe('/events?topics=le&last_event_id=%1B%0A%FF%22');
    is($s->status, 200, 'last_event_id=ESC LF 0xFF ": the stream opens');
    $s->events(2, 5);
    my ($reset) = event_data($s, 'reset');
    my $v = eval { $JSON->decode($reset // '') };
    ok($v && $v->{last_event_id} =~ /\A\x1b\n\x{FFFD}+"\z/ && $v->{reason} eq 'malformed',
       'last_event_id=...: the reset event data is JSON, invalid UTF-8 as U+FFFD')
        or diag('reset data: ' . show($reset));
    ok(index($t->error_log, 'after id ' . esc("\x1b\n\xff\"")) >= 0, 'last_event_id: the log line shows the id escaped')
        or diag(show(join "\n", grep { /cannot resume/ } split /\n/, $t->error_log));
    $s->close;

    my $h = $t->resume('/events?topics=le', "\x1b\"\\\xff\xc3");
    is($h->status, 200, 'Last-Event-ID: ESC " \\ 0xFF 0xC3: the stream opens');
    $h->events(2, 5);
    ($reset) = event_data($h, 'reset');
    $v = eval { $JSON->decode($reset // '') };
    ok($v && $v->{last_event_id} =~ /\A\x1b"\\\x{FFFD}+\z/, 'Last-Event-ID: the reset event data is JSON')
        or diag('reset data: ' . show($reset));
    ok(index($t->error_log, 'after id ' . esc("\x1b\"\\\xff\xc3")) >= 0, 'Last-Event-ID: the log line shows it escaped')
        or diag(show(join "\n", grep { /cannot resume/ } split /\n/, $t->error_log));
    $h->close;
}

# --- a user key with hostile bytes: connected event, sse_clients, publish targets ------------------
my $USER = "\x1b\"\\\xff\xc3";
my $UQ = '%1B%22%5C%FF%C3';
my $u = $t->subscribe('/events?topics=uk', headers => {'X-User' => $USER});
is($u->status, 200, 'a stream with X-User: ESC " \\ 0xFF 0xC3 opens');
$u->events(1, 5);
my ($connected) = event_data($u, 'connected');
my $cv = eval { $JSON->decode($connected // '') };
ok($cv && $cv->{user} =~ /\A\x1b"\\\x{FFFD}+\z/, 'the connected event data is JSON, invalid UTF-8 as U+FFFD')
    or diag('connected data: ' . show($connected));
my $client_id = $cv ? $cv->{client_id} : 0;

for my $path ('/clients', "/clients?user=$UQ", '/clients?channel=uk', '/clients?channel=%1B%0A%FF',
              '/clients?user=%0A%0D%00', '/stats', '/stats?channels=all', '/stats?channels=uk') {
    my $r = req("GET $path", 'GET', $path);
    is($r->{status}, 200, "GET $path: 200");
}
{
    my $r = $t->request('GET', "/clients?user=$UQ");
    my $v = eval { $JSON->decode($r->{body}) };
    ok($v && @{ $v->{clients} } == 1 && $v->{clients}[0]{client_id} eq $client_id
       && $v->{clients}[0]{user} =~ /\A\x1b"\\\x{FFFD}+\z/,
       'sse_clients user=<the key>: that one stream, its user as JSON text') or diag(show($r->{body}));
}
refused('sse_publish_client id with LF ESC "', 400, 'POST', '/to-client?id=1%0A%1B%22', "1\n\x1b\"", body => 'x');
{
    my $r = req('sse_clients id with LF ESC', 'GET', '/clients?id=%0A%1B');
    is($r->{status}, 400, 'sse_clients id with LF ESC: 400');
    $r = req('sse_publish_user with CR LF NUL', 'POST', '/to-user?user=%0D%0A%00', body => 'x');
    $r = req('sse_publish_user to the hostile key', 'POST', "/to-user?user=$UQ", body => 'for the key');
    is($r->{status}, 202, 'sse_publish_user to the hostile key: 202');
    is(eval { $JSON->decode($r->{body})->{subscribers} }, 1, 'it reached the stream');
    ok(scalar(grep { $_->{data} eq 'for the key' } $u->events(2, 5)), 'the stream got the event');
    $r = req('sse_publish_client to the stream', 'POST', "/to-client?id=$client_id", body => 'for the client');
    is($r->{status}, 202, 'sse_publish_client to the stream: 202');
    $r = req('DELETE sse_clients user=<the key>', 'DELETE', "/clients?user=$UQ");
    is(eval { $JSON->decode($r->{body})->{disconnected} }, 1, 'DELETE sse_clients user=<the key> disconnects it');
    ok($u->wait_eof(5), 'the stream ends');
}

# --- the per-key limit: the refusal names the key, escaped ------------------------------------
{
    my $KEY = "\x1b\"\\\xff";
    my $k1 = $t->subscribe('/keyed?topics=k', headers => {'X-Key' => $KEY});
    is($k1->status, 200, 'first stream with X-Key: ESC " \\ 0xFF: 200');
    my $r = req('the second stream with the same key', 'GET', '/keyed?topics=k', headers => {'X-Key' => $KEY});
    is($r->{status}, 429, 'the second stream with the same key: 429');
    my @lines = grep { /sse: stream refused: key / } split /\n/, $t->error_log;
    ok(@lines == 1 && index($lines[0], 'key ' . esc($KEY) . ' ') >= 0 && $lines[0] =~ /\[info\]/,
       'the per-key refusal is logged at info with the key escaped (ESC as \\x1B)')
        or diag(join "\n", map { show($_) } @lines);
    $k1->close;
}

# --- the whole log ------------------------------------------------------------------------------
$t->stats_until({subscribers => 0}, 5);
my $log = $t->error_log;
my @ctrl = grep { /$CTRL/ } split /\n/, $log;
ok(!@ctrl, 'error.log holds no control byte (other than tab and line feed)')
    or diag(scalar(@ctrl) . " lines, e.g.:\n" . join "\n", map { show($_) } @ctrl[0 .. ($#ctrl < 4 ? $#ctrl : 4)]);
my @odd = grep { !m{^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[[a-z]+\] } } split /\n/, $log;
ok(!@odd, 'every line of error.log is a log line (date, time, [level])')
    or diag(scalar(@odd) . " other lines, e.g.:\n" . join "\n", map { show($_) } @odd[0 .. ($#odd < 4 ? $#odd : 4)]);
ok(!grep({ /^INJECTED/ } split /\n/, $log), 'no line starts with INJECTED');
my @high = grep { /sse: / && /[\x80-\xFF]/ } split /\n/, $log;
ok(!@high, "the module's lines hold no byte 0x80-0xFF") or diag(join "\n", map { show($_) } @high[0 .. 0]);
my @sse_err = grep { /\[(error|warn)\] .*sse: / } split /\n/, $log;
ok(!@sse_err, 'no client mistake was logged above info') or diag(join "\n", map { show($_) } @sse_err);

$t->finish;
done_testing;
