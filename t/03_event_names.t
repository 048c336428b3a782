# Event names (header, query, precedence, limits), refusals of bad publishes and bad channel
# lists with their exact one-line reasons, 405 with Allow, 413, 404.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use SSETest;
use Time::HiRes qw(time);

my $t = SSETest->new(server => <<'CONF')->start;
        location = /events {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
        }
        location = /hevents {
            sse_subscribe $http_x_channels;
            sse_heartbeat off;
        }
        location = /events2 {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
            sse_max_channels 2;
        }
        location = /pub {
            sse_publish $arg_topic;
        }
        location = /hpub {
            sse_publish $http_x_channels;
        }
        location = /pub2 {
            sse_publish $arg_topic;
            sse_max_channels 2;
        }
        location = /small {
            client_max_body_size 1k;
            sse_publish $arg_topic;
        }
CONF

# If the test dies midway, stop nginx before File::Temp removes its directory (and pid file).
END { local $?; $t->stop if $t }

my $PRE = ":ok\n\n";
my $CHAN_RULE = 'use 1-128 of A-Z a-z 0-9 _ - . : @ /';

my $s = $t->subscribe('/events?topics=names');
is($s->status, 200, 'stream opens');
is($s->wait_body(length $PRE), $PRE, 'preamble');

my $seen = 0;
# Publishes and returns the frame of the event the stream got next.
sub pub_frame {
    my ($path, $data, $label, %o) = @_;
    my $r = eval { $t->publish($path, $data, %o) };
    ok($r, "$label: publish accepted") or diag($@);
    $r ||= {};
    my $ev = {};
    my $at = -1;
    my $end = time + 5;
    while ($at < 0 && time < $end) {
        my $have = () = $s->events;
        my @ev = $s->events($have + 1, 0.2);
        for my $i ($seen .. $#ev) {
            next unless defined $r->{id} && $ev[$i]{id} eq $r->{id};
            ($at, $ev) = ($i, $ev[$i]);
            last;
        }
    }
    is($at, $seen, "$label: the stream got it next") or diag('unexpected frames before it: ' .
        join('', map { $_->{frame} } ($s->events)[$seen .. $at - 1]));
    $seen = $at + 1 if $at >= 0;
    return ($r, $ev->{frame} // '');
}

# Checks that a refused request published nothing: a marker published next is the next event.
sub nothing_published {
    my ($label) = @_;
    my ($r, $frame) = pub_frame('/pub?topic=names', "marker after $label", "marker after $label");
    is($frame, "id: $r->{id}\ndata: marker after $label\n\n", "$label: nothing was published before the marker");
}

# Checks a refusal: status, text/plain, exact one-line body.
sub refused {
    my ($r, $status, $reason, $label) = @_;
    is($r->{status}, $status, "$label: $status");
    like($r->{headers}{'content-type'} // '', qr{^text/plain\b}, "$label: text/plain");
    is($r->{body}, "$reason\n", "$label: exact reason");
}

# --- Event names ---------------------------------------------------------------------------
{
    my ($r, $f) = pub_frame('/pub?topic=names', 'h', 'name from header', headers => {'X-SSE-Event' => 'order.created'});
    is($f, "id: $r->{id}\nevent: order.created\ndata: h\n\n", 'name from X-SSE-Event header');

    ($r, $f) = pub_frame('/pub?topic=names&event=user%2Eupdated', 'q', 'name from query');
    is($f, "id: $r->{id}\nevent: user.updated\ndata: q\n\n", 'name from ?event= with %2E decoded');

    ($r, $f) = pub_frame('/pub?topic=names&event=a+b%20c%2Bd%3A%2F', 'q2', 'query with + and escapes');
    is($f, "id: $r->{id}\nevent: a b c+d:/\ndata: q2\n\n", "'+' is a space, %20 a space, %2B a plus");

    ($r, $f) = pub_frame('/pub?event=first&topic=names', 'q3', 'event arg before topic');
    is($f, "id: $r->{id}\nevent: first\ndata: q3\n\n", 'event arg in any position');

    ($r, $f) = pub_frame('/pub?topic=names&event=from.query', 'both', 'header and query',
                         headers => {'X-SSE-Event' => 'from.header'});
    is($f, "id: $r->{id}\nevent: from.header\ndata: both\n\n", 'the header wins over the query');

    ($r, $f) = pub_frame('/pub?topic=names&event=caf%C3%A9', 'u', 'UTF-8 name');
    is($f, "id: $r->{id}\nevent: caf\xc3\xa9\ndata: u\n\n", 'percent-encoded UTF-8 name decoded');

    ($r, $f) = pub_frame('/pub?topic=names', 'hdr', 'header name with spaces', headers => {'X-SSE-Event' => 'with space'});
    is($f, "id: $r->{id}\nevent: with space\ndata: hdr\n\n", 'header name with an inner space kept');

    my $n128 = 'n' x 120 . '.abcdefg';
    is(length $n128, 128, '128-byte name');
    ($r, $f) = pub_frame("/pub?topic=names&event=$n128", 'max', '128-byte name in query');
    is($f, "id: $r->{id}\nevent: $n128\ndata: max\n\n", '128-byte name accepted (query)');
    ($r, $f) = pub_frame('/pub?topic=names', 'maxh', '128-byte name in header', headers => {'X-SSE-Event' => $n128});
    is($f, "id: $r->{id}\nevent: $n128\ndata: maxh\n\n", '128-byte name accepted (header)');
    my $e128 = '%2E' x 128;
    ($r, $f) = pub_frame("/pub?topic=names&event=$e128", 'dots', '128 decoded bytes from 384 encoded');
    is($f, "id: $r->{id}\nevent: " . ('.' x 128) . "\ndata: dots\n\n", 'the limit applies to the decoded name');
}

# --- Bad names ------------------------------------------------------------------------------
{
    my $n129 = 'n' x 129;
    refused($t->request('POST', "/pub?topic=names&event=$n129", body => 'x'), 400,
            'event name longer than 128 bytes', '129-byte name in query');
    refused($t->request('POST', '/pub?topic=names', body => 'x', headers => {'X-SSE-Event' => $n129}), 400,
            'event name longer than 128 bytes', '129-byte name in header');
    refused($t->request('POST', '/pub?topic=names&event=' . ('%2E' x 129), body => 'x'), 400,
            'event name longer than 128 bytes', '129 decoded bytes in query');
    refused($t->request('POST', '/pub?topic=names&event=a%0Ab', body => 'x'), 400,
            'event name contains CR or LF', 'LF (%0A) in name');
    refused($t->request('POST', '/pub?topic=names&event=a%0Db', body => 'x'), 400,
            'event name contains CR or LF', 'CR (%0D) in name');
    refused($t->request('POST', '/pub?topic=names&event=a%0D%0A', body => 'x'), 400,
            'event name contains CR or LF', 'CRLF at the end of the name');
    nothing_published('bad names');
}

# --- Non-UTF-8 data -------------------------------------------------------------------------
{
    for my $c (['0xff', "\xff"], ['lone continuation', "abc\x80"], ['truncated 2-byte', "ab\xc3"],
               ['overlong', "\xc0\xaf"], ['surrogate', "\xed\xa0\x80"], ['above U+10FFFF', "\xf4\x90\x80\x80"],
               ['latin-1 text', "caf\xe9"]) {
        refused($t->request('POST', '/pub?topic=names', body => $c->[1]), 400,
                'event data is not valid UTF-8', "non-UTF-8 data: $c->[0]");
    }
    refused($t->request('PUT', '/pub?topic=names', body => "\xfe\xff"), 400,
            'event data is not valid UTF-8', 'non-UTF-8 data by PUT');
    nothing_published('non-UTF-8 data');
}

# --- 405 ------------------------------------------------------------------------------------
{
    for my $m (qw(PATCH OPTIONS)) {
        my $r = $t->request($m, '/pub?topic=names', body => ($m eq 'PATCH' ? 'x' : ''));
        is($r->{status}, 405, "$m on the publish location: 405");
        my $allow = $r->{headers}{allow} // '';
        ok(length $allow, "$m on the publish location: Allow header present");
        my %allow = map { $_ => 1 } split /\s*,\s*/, $allow;
        ok($allow{$_}, "publish location Allow lists $_") for qw(GET POST PUT DELETE);
        ok(!$allow{$m}, "publish location Allow does not list $m");
    }
    nothing_published('PATCH');

    for my $m (qw(POST PUT DELETE PATCH)) {
        my $r = $t->request($m, '/events?topics=names', body => ($m =~ /^(POST|PUT|PATCH)$/ ? 'x' : ''));
        is($r->{status}, 405, "$m on the stream location: 405");
        my %allow = map { $_ => 1 } split /\s*,\s*/, $r->{headers}{allow} // '';
        ok($allow{GET}, "$m on the stream location: Allow lists GET");
        ok(!$allow{$m}, "$m on the stream location: Allow does not list $m");
        unlike($r->{headers}{'content-type'} // '', qr{event-stream}, "$m on the stream location: not a stream");
    }
    nothing_published('POST on the stream location');
}

# --- Bad channel lists ----------------------------------------------------------------------
my $c128 = join('', map { chr(ord('a') + $_ % 26) } 0 .. 127);
my $c129 = $c128 . 'X';
my @c33 = map { "c$_" } 1 .. 33;

# Checks the "longer than 128 bytes" refusal: the quoted name may be cut short with "...".
sub refused_long {
    my ($r, $name, $label) = @_;
    is($r->{status}, 400, "$label: 400");
    like($r->{body}, qr/^channel name longer than 128 bytes: "[^"\n]*"(?:\.\.\.)?\n\z/, "$label: reason");
    my ($shown) = $r->{body} =~ /"([^"\n]*)"/;  # at most 128 bytes of it, then "..." after the quote
    $shown //= '';
    (my $prefix = $shown) =~ s/\.\.\.\z//;
    ok(length $prefix && index($name, $prefix) == 0, "$label: the reason quotes the name (or its start)")
        or diag("shown: $shown");
}

# Subscribe side: a refused stream answers 400 text/plain and is not a stream.
sub sub_refused {
    my ($path, $reason, $label, %o) = @_;
    refused($t->request('GET', $path, %o), 400, $reason, "subscribe $label");
}

sub_refused('/events', 'no channel given', 'without the argument');
sub_refused('/events?topics=', 'no channel given', 'empty list');
sub_refused('/hevents', 'no channel given', 'empty header', headers => {'X-Channels' => ' '});
sub_refused('/events?topics=a!b', qq{invalid channel name "a!b": $CHAN_RULE}, 'bad char !');
sub_refused('/events?topics=ok,bad%20name', qq{invalid channel name "bad name": $CHAN_RULE}, 'bad char: %20 decodes to a space');
sub_refused('/hevents', qq{invalid channel name "a b": $CHAN_RULE}, 'inner space', headers => {'X-Channels' => 'a b'});
sub_refused('/hevents', qq{invalid channel name "x*y": $CHAN_RULE}, 'bad char *', headers => {'X-Channels' => 'ok, x*y'});
refused_long($t->request('GET', "/events?topics=$c129"), $c129, 'subscribe 129-byte name');
refused_long($t->request('GET', "/events?topics=ok,$c129"), $c129, 'subscribe 129-byte name second');
sub_refused('/events?topics=' . join(',', @c33), 'too many channels: at most 32 per request', '33 channels');
sub_refused('/events2?topics=a,b,c', 'too many channels: at most 2 per request', '3 channels, sse_max_channels 2');

# Accepted edges.
{
    my $r = $t->subscribe('/events?topics=' . join(',', @c33[0 .. 31]));
    is($r->status, 200, 'subscribe: 32 channels accepted');
    my $d = $t->subscribe('/events?topics=' . join(',', @c33[0 .. 31], 'c1'));
    is($d->status, 200, 'subscribe: 33 names with a duplicate (32 distinct) accepted');
    my $l = $t->subscribe("/events?topics=$c128");
    is($l->status, 200, 'subscribe: 128-byte channel name accepted');
    my $two = $t->subscribe('/events2?topics=a,b,a');
    is($two->status, 200, 'subscribe: 2 distinct channels under sse_max_channels 2 accepted');
    my $chars = $t->subscribe('/events?topics=AZaz09_-.:@/');
    is($chars->status, 200, 'subscribe: every allowed character accepted');

    my $pr = $t->publish("/pub?topic=$c128", 'long');
    is($pr->{subscribers}, 1, 'publish to the 128-byte channel reaches its subscriber');
    my @ev = $l->events(1, 5);
    is($ev[0]{frame}, "id: $pr->{id}\ndata: long\n\n", '128-byte channel: exact frame');
    $pr = $t->publish('/pub?topic=AZaz09_-.:@/', 'chars');
    is($pr->{subscribers}, 1, 'publish to the channel of every allowed character');
    @ev = $chars->events(1, 5);
    is($ev[0]{frame}, "id: $pr->{id}\ndata: chars\n\n", 'every allowed character: exact frame');
    $_->close for $r, $d, $l, $two, $chars;
}

# Publish side: each refusal publishes nothing, not even to the valid channels listed before the
# bad entry (a marker published next is the next event of a stream on such a channel).
sub pub_refused {
    my ($path, $reason, $label, %o) = @_;
    refused($t->request('POST', $path, body => 'x', %o), 400, $reason, "publish $label");
    nothing_published("publish $label");
}
pub_refused('/pub', 'no channel given', 'without the argument');
pub_refused('/pub?topic=', 'no channel given', 'empty list');
pub_refused('/pub?topic=a!b', qq{invalid channel name "a!b": $CHAN_RULE}, 'bad char !');
pub_refused('/pub?topic=names,a!b', qq{invalid channel name "a!b": $CHAN_RULE}, 'good channel then bad char');
pub_refused('/hpub', qq{invalid channel name "a b": $CHAN_RULE}, 'inner space', headers => {'X-Channels' => 'names, a b'});
refused_long($t->request('POST', "/pub?topic=$c129", body => 'x'), $c129, 'publish 129-byte name');
nothing_published('publish 129-byte name');
refused_long($t->request('POST', "/pub?topic=names,$c129", body => 'x'), $c129, 'publish 129-byte name second');
nothing_published('publish 129-byte name second');
pub_refused('/pub?topic=' . join(',', 'names', @c33[0 .. 31]), 'too many channels: at most 32 per request', '33 channels');
pub_refused('/pub2?topic=names,b,c', 'too many channels: at most 2 per request', '3 channels, sse_max_channels 2');
pub_refused('/pub?topic=names,a!b', qq{invalid channel name "a!b": $CHAN_RULE}, 'PUT good channel then bad char',
            method => 'PUT');
refused($t->request('GET', '/pub?topic=a!b'), 400, qq{invalid channel name "a!b": $CHAN_RULE}, 'GET on publish: bad channel');
refused($t->request('DELETE', '/pub?topic='), 400, 'no channel given', 'DELETE on publish: empty list');

# A refused DELETE closes nothing, not even the valid channels listed before the bad entry.
{
    my $victim = $t->subscribe('/events?topics=victim');
    is($victim->wait_body(length $PRE), $PRE, 'victim stream opens');
    refused($t->request('DELETE', '/pub?topic=victim,a!b'), 400, qq{invalid channel name "a!b": $CHAN_RULE},
            'DELETE on publish: good channel then bad char');
    $victim->drain(0.3);
    ok(!$victim->eof, 'the refused DELETE did not end the stream of the good channel');
    my $st = $t->request('GET', '/pub?topic=victim');
    is($st->{status}, 200, 'the good channel still exists after the refused DELETE');
    like($st->{body}, qr/"subscribers":1\b/, 'and still has its subscriber');
    $victim->close;
}
nothing_published('bad channel lists');
{
    my $r = $t->publish('/pub2?topic=names,names,other', 'two');
    is($r->{subscribers}, 1, 'publish: 2 distinct channels under sse_max_channels 2 accepted');
    my @ev = $s->events($seen + 1, 5);
    is(scalar(@ev), $seen + 1, 'duplicate channel in a publish: one event');
    is($ev[$seen]{frame}, "id: $r->{id}\ndata: two\n\n", 'duplicate channel in a publish: exact frame');
    $seen = @ev;
    my $f;
    ($r, $f) = pub_frame('/hpub', 'spaced', 'spaced list', headers => {'X-Channels' => '  names ,  other  '});
    is($r->{subscribers}, 1, 'spaces around commas trimmed on publish');
    is($f, "id: $r->{id}\ndata: spaced\n\n", 'spaced channel list: exact frame');
}

# --- 413 ------------------------------------------------------------------------------------
{
    my $r = $t->request('POST', '/small?topic=names', body => 'y' x 2048);
    is($r->{status}, 413, 'body over client_max_body_size: 413');
    $r = $t->request('PUT', '/small?topic=names', body => 'y' x 1025);
    is($r->{status}, 413, 'PUT body one byte over client_max_body_size: 413');
    $t->allow_log(qr/client intended to send too large body/);
    my ($ok, $f) = pub_frame('/small?topic=names', 'y' x 1024, 'body of exactly client_max_body_size');
    is($ok->{events}, 1, 'body of exactly client_max_body_size accepted');
    is($f, "id: $ok->{id}\ndata: " . ('y' x 1024) . "\n\n", 'the 1k event is the next one: the 413s published nothing');
}

# --- 404 ------------------------------------------------------------------------------------
{
    my $r = $t->request('GET', '/pub?topic=nobody.here');
    refused($r, 404, 'no such channel', 'GET of an unknown channel');
    $r = $t->request('DELETE', '/pub?topic=nobody.here');
    refused($r, 404, 'no such channel', 'DELETE of an unknown channel');
    my $known = $t->get_json('/pub?topic=names');
    is($known->{channel}, 'names', 'GET of a known channel still works');
    is($known->{subscribers}, 1, 'GET of a known channel: one subscriber');
}

$s->drain(0.3);
is(scalar($s->events), $seen, 'the stream got exactly the accepted events');
$s->close;
$t->finish;
done_testing;
