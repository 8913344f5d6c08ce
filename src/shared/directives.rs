//! The directives every front-end has, each parsed here (the zone's two
//! arguments by `zone::DeclaredZone::directive`), and the one list each
//! module's command table is built from (`command_table`): a directive is
//! added in one place, `directives`, or, for a front-end's own (http's
//! status page), in its module's list.

use core::ffi::{c_char, c_void};
use core::ptr;

use nginx_sys::{
    ngx_command_t, ngx_conf_t, ngx_str_t, ngx_uint_t, NGX_CONF_ANY, NGX_CONF_NOARGS,
    NGX_CONF_TAKE12, NGX_CONF_TAKE2,
};
use ngx::ngx_string;

use crate::core::check_conf::CheckParams;
use crate::core::rebalance::Params;
use crate::ngx::conf::{
    args, directive_result, log_warning, parse_ms, parse_seconds, text, ConfError,
};

use super::front_end::{init_upstream, FrontEnd};
use super::module_conf::{MainConf, MethodParams, SrvConf};

/// A directive's handler, as nginx calls it.
pub type Handler =
    unsafe extern "C" fn(*mut ngx_conf_t, *mut ngx_command_t, *mut c_void) -> *mut c_char;

/// The block a directive stands in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Block {
    Main,
    Upstream,
    Location,
}

/// One directive: its name, its block, the arguments it takes
/// (`NGX_CONF_NOARGS`, `NGX_CONF_TAKE1`, ...: nginx checks how many), and
/// its handler.
pub struct Directive {
    pub name: ngx_str_t,
    pub block: Block,
    pub args: u32,
    pub set: Handler,
}

/// A block as one subsystem names it: its flag (`NGX_HTTP_MAIN_CONF`, ...)
/// and where a directive's configuration is in the block's context
/// (`NGX_HTTP_MAIN_CONF_OFFSET`, ...).
#[derive(Clone, Copy, Debug)]
pub struct Place {
    pub flag: u32,
    pub conf: usize,
}

/// A subsystem's blocks; `location: None` for one without locations.
pub struct Subsystem {
    pub main: Place,
    pub upstream: Place,
    pub location: Option<Place>,
}

/// The directives of every front-end, in the order nginx lists them.
pub const fn directives<F: FrontEnd>() -> [Directive; 4] {
    [
        Directive {
            name: ngx_string!("least_conn_persistent_zone"),
            block: Block::Main,
            args: NGX_CONF_TAKE2,
            set: cmd_zone::<F>,
        },
        Directive {
            name: ngx_string!("least_conn_persistent"),
            block: Block::Upstream,
            args: NGX_CONF_NOARGS | NGX_CONF_TAKE12,
            set: cmd_method::<F>,
        },
        Directive {
            name: ngx_string!("least_conn_persistent_rebalance"),
            block: Block::Upstream,
            args: NGX_CONF_ANY,
            set: cmd_rebalance,
        },
        Directive {
            name: ngx_string!("least_conn_persistent_check"),
            block: Block::Upstream,
            args: NGX_CONF_ANY,
            set: cmd_check,
        },
    ]
}

/// A module's command table: every front-end's `directives`, then the
/// module's `own`, in `subsystem`'s terms, and the empty command nginx
/// stops at. `N` is their number plus one: a table built in a static
/// fails to compile otherwise.
pub const fn command_table<const N: usize>(
    subsystem: &Subsystem,
    directives: &[Directive],
    own: &[Directive],
) -> [ngx_command_t; N] {
    assert!(
        N == directives.len() + own.len() + 1,
        "a command table holds its directives and the empty command"
    );
    let mut table = [ngx_command_t::empty(); N];
    let mut i = 0;
    while i < directives.len() {
        table[i] = command(subsystem, &directives[i]);
        i += 1;
    }
    while i < directives.len() + own.len() {
        table[i] = command(subsystem, &own[i - directives.len()]);
        i += 1;
    }
    table
}

/// `d` as `subsystem`'s command table lists it.
const fn command(subsystem: &Subsystem, d: &Directive) -> ngx_command_t {
    let place = match (d.block, subsystem.location) {
        (Block::Main, _) => subsystem.main,
        (Block::Upstream, _) => subsystem.upstream,
        (Block::Location, Some(place)) => place,
        (Block::Location, None) => panic!("a location directive in a subsystem without locations"),
    };
    ngx_command_t {
        name: d.name,
        type_: (place.flag | d.args) as ngx_uint_t,
        set: Some(d.set),
        conf: place.conf,
        offset: 0,
        post: ptr::null_mut(),
    }
}

/// `least_conn_persistent_zone <name> <size>;` in the main block.
pub extern "C" fn cmd_zone<F: FrontEnd>(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes the configuration being parsed, this command, and
    // our main configuration (the command's MAIN_CONF_OFFSET).
    let (cf, cmd, mcf) = unsafe { (&mut *cf, &*cmd, &mut *conf.cast::<MainConf>()) };
    let tag = ptr::from_ref(F::module()).cast();
    let r = mcf.registry.declared_zone().directive(cf, tag);
    directive_result(cf, cmd.name.as_bytes(), r)
}

/// `least_conn_persistent;` in an `upstream {}` block.
pub extern "C" fn cmd_method<F: FrontEnd>(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: as in cmd_zone; `conf` is our srv conf of this upstream.
    let (cf, cmd, scf) = unsafe { (&mut *cf, &*cmd, &mut *conf.cast::<SrvConf>()) };
    let r = method_params(args(cf)).and_then(|params| {
        F::upstream_being_parsed(cf)
            .ok_or(ConfError::NoMemory)
            .map(|uscf| scf.claim(uscf, Some(init_upstream::<F>), params))
    });
    if let Ok(Some(warning)) = &r {
        log_warning(cf, cmd.name.as_bytes(), warning);
    }
    directive_result(cf, cmd.name.as_bytes(), r.map(drop))
}

/// `least_conn_persistent_rebalance [rate=N/s] [tolerance=N%] [min_age=time]
/// [jitter=time];` in an `upstream {}` block, after `least_conn_persistent`.
pub extern "C" fn cmd_rebalance(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: as in cmd_zone; `conf` is our srv conf of this upstream.
    let (cf, cmd, scf) = unsafe { (&mut *cf, &*cmd, &mut *conf.cast::<SrvConf>()) };
    let r = once_after_method(
        cf,
        scf,
        |c| &mut c.rebalance,
        ConfError::RebalanceWithoutMethod,
        |a| Params::parse(a, parse_seconds).map_err(ConfError::Rebalance),
    );
    directive_result(cf, cmd.name.as_bytes(), r)
}

/// What the directives of an upstream that come once, after the method,
/// do with their parameters: parse them into `field` of the upstream's
/// configuration, or say why not.
fn once_after_method<T>(
    cf: &ngx_conf_t,
    scf: &mut SrvConf,
    field: fn(&mut SrvConf) -> &mut Option<T>,
    without_method: ConfError,
    parse: impl FnOnce(&[&[u8]]) -> Result<T, ConfError>,
) -> Result<(), ConfError> {
    let args: Vec<&[u8]> = args(cf).iter().map(|a| a.as_bytes()).collect();
    if field(scf).is_some() {
        return Err(ConfError::Duplicate);
    }
    if !scf.enabled {
        return Err(without_method);
    }
    *field(scf) = Some(parse(&args)?);
    Ok(())
}

/// `least_conn_persistent_check [type=tcp|http] [uri=/path] [port=N]
/// [interval=time] [timeout=time] [rise=N] [fall=N] [status=codes]
/// [capacity=header] [load=header];` in an `upstream {}` block, after
/// `least_conn_persistent` (`core::check_conf`). That a zone is declared
/// is known only once the block is parsed (`postconfiguration`).
pub extern "C" fn cmd_check(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: as in cmd_zone; `conf` is our srv conf of this upstream.
    let (cf, cmd, scf) = unsafe { (&mut *cf, &*cmd, &mut *conf.cast::<SrvConf>()) };
    let r = once_after_method(
        cf,
        scf,
        |c| &mut c.check,
        ConfError::CheckWithoutMethod,
        |a| CheckParams::parse(a, parse_ms).map_err(ConfError::Check),
    );
    directive_result(cf, cmd.name.as_bytes(), r)
}

/// The parameters of `least_conn_persistent` (nginx allows it two), each at
/// most once: `slow_start=<time>` (the window, in deciseconds; 0: none) and
/// `index=<n>|off`.
fn method_params(args: &[ngx_str_t]) -> Result<MethodParams, ConfError> {
    method_params_with(args, parse_seconds)
}

/// `method_params`, times read by `seconds` (nginx's parser, which unit
/// tests cannot link).
fn method_params_with(
    args: &[ngx_str_t],
    seconds: fn(&[u8]) -> Option<u64>,
) -> Result<MethodParams, ConfError> {
    let mut params = MethodParams::default();
    let mut seen = (false, false);
    for arg in args {
        let bytes = arg.as_bytes();
        if let Some(value) = bytes.strip_prefix(b"slow_start=") {
            once(&mut seen.0, "slow_start")?;
            params.slow_start = parse_slow_start(value, seconds)?;
        } else if let Some(value) = bytes.strip_prefix(b"index=") {
            once(&mut seen.1, "index")?;
            params.index_from = parse_index_from(value)?;
        } else {
            return Err(ConfError::InvalidParameter(text(arg)));
        }
    }
    Ok(params)
}

/// A parameter's first time (`seen` set), or why not.
fn once(seen: &mut bool, name: &'static str) -> Result<(), ConfError> {
    if core::mem::replace(seen, true) {
        return Err(ConfError::Repeated(name));
    }
    Ok(())
}

/// `slow_start=<time>`: deciseconds.
fn parse_slow_start(value: &[u8], seconds: fn(&[u8]) -> Option<u64>) -> Result<u32, ConfError> {
    (!value.is_empty())
        .then(|| seconds(value))
        .flatten()
        .and_then(|secs| u32::try_from(secs.checked_mul(10)?).ok())
        .ok_or_else(|| ConfError::InvalidSlowStart(String::from_utf8_lossy(value).into_owned()))
}

/// `index=<n>|off`: the smallest list a pick index is built for.
fn parse_index_from(value: &[u8]) -> Result<usize, ConfError> {
    if value == b"off" {
        return Ok(usize::MAX);
    }
    core::str::from_utf8(value)
        .ok()
        .filter(|v| v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|&n| n >= 1)
        .map(|n| n as usize)
        .ok_or_else(|| ConfError::InvalidIndex(String::from_utf8_lossy(value).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    extern "C" fn first(_: *mut ngx_conf_t, _: *mut ngx_command_t, _: *mut c_void) -> *mut c_char {
        ptr::null_mut()
    }

    extern "C" fn second(_: *mut ngx_conf_t, _: *mut ngx_command_t, _: *mut c_void) -> *mut c_char {
        ptr::null_mut()
    }

    /// Blocks whose flags and offsets tell them apart.
    const BLOCKS: Subsystem = Subsystem {
        main: Place {
            flag: 1 << 24,
            conf: 0,
        },
        upstream: Place {
            flag: 1 << 25,
            conf: 8,
        },
        location: Some(Place {
            flag: 1 << 26,
            conf: 16,
        }),
    };

    fn directive(name: ngx_str_t, block: Block, args: u32, set: Handler) -> Directive {
        Directive {
            name,
            block,
            args,
            set,
        }
    }

    fn shape(c: &ngx_command_t) -> (&[u8], ngx_uint_t, ngx_uint_t, Option<usize>) {
        (
            c.name.as_bytes(),
            c.type_,
            c.conf,
            c.set.map(|f| f as usize),
        )
    }

    #[test]
    fn each_directive_stands_in_its_block_as_the_subsystem_names_it() {
        let shared = [
            directive(ngx_string!("a"), Block::Main, NGX_CONF_TAKE2, first),
            directive(ngx_string!("b"), Block::Upstream, NGX_CONF_ANY, second),
        ];
        let own = [directive(
            ngx_string!("c"),
            Block::Location,
            NGX_CONF_NOARGS,
            first,
        )];
        let table: [ngx_command_t; 4] = command_table(&BLOCKS, &shared, &own);
        let (first, second) = (first as Handler as usize, second as Handler as usize);
        let (first, second) = (Some(first), Some(second));
        let expected: [(&[u8], ngx_uint_t, ngx_uint_t, Option<usize>); 4] = [
            (b"a", (1 << 24 | NGX_CONF_TAKE2) as ngx_uint_t, 0, first),
            (b"b", (1 << 25 | NGX_CONF_ANY) as ngx_uint_t, 8, second),
            (b"c", (1 << 26 | NGX_CONF_NOARGS) as ngx_uint_t, 16, first),
            (b"", 0, 0, None),
        ];
        let shapes: Vec<_> = table.iter().map(shape).collect();
        assert_eq!(shapes, expected);
        // nginx compares a directive's name with strcmp: it ends in NUL.
        // SAFETY: `ngx_string!` gave "c" and its NUL.
        assert_eq!(unsafe { *table[2].name.data.add(1) }, 0);
    }

    #[test]
    #[should_panic(expected = "a location directive in a subsystem without locations")]
    fn a_subsystem_without_locations_takes_no_location_directive() {
        let no_locations = Subsystem {
            location: None,
            ..BLOCKS
        };
        let own = [directive(
            ngx_string!("c"),
            Block::Location,
            NGX_CONF_NOARGS,
            first,
        )];
        let _: [ngx_command_t; 2] = command_table(&no_locations, &[], &own);
    }

    #[test]
    #[should_panic(expected = "a command table holds its directives and the empty command")]
    fn a_table_has_room_for_its_directives_and_the_end_exactly() {
        let own = [directive(
            ngx_string!("a"),
            Block::Main,
            NGX_CONF_TAKE2,
            first,
        )];
        let _: [ngx_command_t; 1] = command_table(&BLOCKS, &[], &own);
    }

    fn params(args: &[&'static str]) -> Result<MethodParams, ConfError> {
        let args: Vec<ngx_str_t> = args
            .iter()
            .map(|a| ngx_str_t {
                len: a.len(),
                data: a.as_ptr().cast_mut(),
            })
            .collect();
        // Seconds as plain numbers, minutes with "m": enough for the test.
        method_params_with(&args, |v| match v.strip_suffix(b"m") {
            Some(m) => core::str::from_utf8(m)
                .ok()?
                .parse::<u64>()
                .ok()
                .map(|m| m * 60),
            None => core::str::from_utf8(v.strip_suffix(b"s").unwrap_or(v))
                .ok()?
                .parse()
                .ok(),
        })
    }

    #[test]
    fn the_method_takes_slow_start_and_index_in_any_order() {
        let default = MethodParams::default();
        assert_eq!(params(&[]).unwrap(), default);
        assert_eq!(params(&["index=off"]).unwrap().index_from, usize::MAX);
        let both = params(&["index=100", "slow_start=30s"]).unwrap();
        assert_eq!((both.slow_start, both.index_from), (300, 100));
        let both = params(&["slow_start=1m", "index=1"]).unwrap();
        assert_eq!((both.slow_start, both.index_from), (600, 1));
    }

    #[test]
    fn a_bad_index_or_a_parameter_twice_is_refused() {
        for bad in [
            "index=0",
            "index=",
            "index=-1",
            "index=1x",
            "index=on",
            "index=99999999999",
        ] {
            assert!(
                matches!(params(&[bad]), Err(ConfError::InvalidIndex(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            params(&["index=4", "index=8"]),
            Err(ConfError::Repeated("index"))
        ));
        assert!(matches!(
            params(&["slow_start=1s", "slow_start=2s"]),
            Err(ConfError::Repeated("slow_start"))
        ));
        assert!(matches!(
            params(&["index=4", "on"]),
            Err(ConfError::InvalidParameter(p)) if p == "on"
        ));
        assert!(matches!(
            params(&["slow_start=x"]),
            Err(ConfError::InvalidSlowStart(_))
        ));
    }
}
