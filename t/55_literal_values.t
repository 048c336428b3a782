# Values that come from clients are literal: in sse_subscribe_allow only a `*` written in the
# configuration is a wildcard (a `*` that a variable brings is a plain byte); a user key (sse_user)
# longer than 256 bytes or holding a comma (sse_publish_user takes comma-separated lists, so such a
# key could never be reached) is a client mistake: 400, one line of reason, logged at info. And the
# event-type filter end to end: types=* keeps events named *x and **, types=order.* keeps order.*x.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use SSETest;
use SSEExpect qw(frames);

my $t = SSETest->new(server => <<'CONF')->start;
        sse_heartbeat off;
        location = /events-h {
            sse_subscribe $arg_topics;
            sse_subscribe_allow "user:$http_x_user";
        }
        location = /events-p {
            sse_subscribe $arg_topics;
            sse_subscribe_allow "public.*" "user:$http_x_user";
        }
        location = /events-room {
            sse_subscribe $arg_topics;
            sse_subscribe_allow "room:$http_x_room*";
        }
        location = /events-u {
            sse_subscribe $arg_topics;
            sse_user $http_x_user;
        }
        location = /events-f {
            sse_subscribe $arg_topics;
            sse_event_filter $arg_types;
        }
        location = /pub {
            sse_publish $arg_topic;
        }
        location = /to-user {
            sse_publish_user $arg_user;
        }
        location = /stats {
            sse_stats;
        }
CONF

END { local $?; $t->stop if $t }
my $PRE = ":ok\n\n";

# The error.log text written since the last call.
my $log_seen = 0;
sub new_log {
    my $all = $t->error_log;
    my $new = substr($all, $log_seen);
    $log_seen = length $all;
    return $new;
}

sub status_of {
    my ($path, $headers) = @_;
    my $r = $t->request('GET', $path, headers => $headers // {}, timeout => 2);
    return $r->{status};
}

# --- sse_subscribe_allow: a `*` from a variable is literal -------------------------------------
is(status_of('/events-h?topics=user:bob', {'X-User' => 'b*'}), 403,
   'allow "user:$http_x_user", X-User: b* -> user:bob is refused (the * came from the header)');
is(status_of('/events-h?topics=user:b', {'X-User' => 'b*'}), 403, 'X-User: b* -> user:b is refused');
is(status_of('/events-h?topics=user:anything', {'X-User' => '*'}), 403, 'X-User: * -> user:anything is refused');
my $st = status_of('/events-h?topics=user:b*', {'X-User' => 'b*'});
ok($st == 400 || $st == 403, "X-User: b* -> user:b* is not a valid channel name: 400 or 403 (got $st)");
# The exact value is allowed.
my $s = $t->subscribe('/events-h?topics=user:bob', headers => {'X-User' => 'bob'});
is($s->status, 200, 'X-User: bob -> user:bob: 200');
$s->close;

{
    my $p = $t->subscribe('/events-p?topics=public.x', headers => {'X-User' => 'b*'});
    is($p->status, 200, 'allow "public.*" "user:$http_x_user": public.x allowed (the * written in the configuration)');
    my $u = $t->subscribe('/events-p?topics=user:alice', headers => {'X-User' => 'alice'});
    is($u->status, 200, 'user:<exact header value> allowed');
    $_->close for $p, $u;
}
is(status_of('/events-p?topics=user:bob', {'X-User' => 'b*'}), 403, 'X-User: b* -> user:bob refused there too');
is(status_of('/events-p?topics=user:alicex', {'X-User' => 'alice'}), 403, 'X-User: alice -> user:alicex refused');
is(status_of('/events-p?topics=public.x,user:bob', {'X-User' => '*'}), 403,
   'X-User: * -> public.x,user:bob refused (user:bob is not allowed)');

# "room:$http_x_room*": the configured * is a wildcard after the variable's literal bytes.
{
    my $r = $t->subscribe('/events-room?topics=room:abc', headers => {'X-Room' => 'a'});
    is($r->status, 200, 'allow "room:$http_x_room*", X-Room: a -> room:abc allowed (the configured *)');
    $r->close;
}
is(status_of('/events-room?topics=room:x', {'X-Room' => '*'}), 403, 'X-Room: * -> room:x refused');
is(status_of('/events-room?topics=room:bx', {'X-Room' => 'b*'}), 403, 'X-Room: b* -> room:bx refused');
is($t->stats_until({subscribers => 0}, 5)->{subscribers}, 0, 'refused requests left no subscriber');
new_log();

# --- sse_user keys ------------------------------------------------------------------------------
sub refused_user_key {
    my ($label, $key, $reason_re) = @_;
    my $r = $t->request('GET', '/events-u?topics=uk', headers => {'X-User' => $key}, timeout => 2);
    is($r->{status}, 400, "$label: 400");
    like($r->{headers}{'content-type'} // '', qr{^text/plain}, "$label: text/plain");
    like($r->{body}, qr/\A[^\n]+\n\z/, "$label: a one-line reason") or diag(explain $r->{body});
    like($r->{body}, $reason_re, "$label: the reason says why") if $reason_re;
    my $log = new_log();
    my @sse = grep { /sse:/ } split /\n/, $log;
    ok(@sse && !grep({ !/\[info\]/ } @sse), "$label: logged at info (and at no other level)") or diag($log);
}
refused_user_key('a 257-byte user key', 'k' x 257);
refused_user_key('a user key with a comma', 'alice,bob', qr/comma/);
refused_user_key('a user key that is only a comma', ',', qr/comma/);
{
    my $ok = $t->subscribe('/events-u?topics=uk', headers => {'X-User' => 'k' x 256});
    is($ok->status, 200, 'a 256-byte user key is accepted');
    $ok->close;
}
is($t->stats_until({subscribers => 0}, 5)->{subscribers}, 0, 'no subscriber left');

# --- the event-type filter: a pattern's * matches a * in the name --------------------------------
my $star = $t->subscribe('/events-f?topics=ft&types=*');
my $order = $t->subscribe('/events-f?topics=ft&types=order.*');
is($_->wait_body(length $PRE, 5), $PRE, 'filtered stream opens') for $star, $order;
my @e = map { $t->publish_event('/pub?topic=ft', "d$_->[1]", $_->[0]) }
    (['*x', 1], ['**', 2], ['order.*x', 3], ['user.*x', 4], ['order.created', 5]);
my $want = $PRE . frames(@e);
is($star->wait_body(length $want, 5), $want, 'types=*: every event, including *x and **');
$want = $PRE . frames(@e[2, 4]);
is($order->wait_body(length $want, 5), $want, 'types=order.*: order.*x and order.created only');
$_->close for $star, $order;

$t->finish;
done_testing;
